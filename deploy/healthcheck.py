"""Container health check: GET ``$FAIRNODE_HEALTH_URL`` (default the web app's /health); exit 0 only on HTTP 200.

A receiver (or ``serve --role all``) answers on its web app; a worker answers on ``jobs.metrics_port``
(``FAIRNODE_HEALTH_URL=http://127.0.0.1:9100/health`` with ``FAIRNODE_JOBS__METRICS_PORT=9100``).
Standard library only: it runs in the image's Python without importing fairnode.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/health"


def main() -> int:
    url = os.environ.get("FAIRNODE_HEALTH_URL", DEFAULT_URL)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        sys.stderr.write(f"unhealthy: {url}: {exc}\n")
        return 1
    if status != 200:
        sys.stderr.write(f"unhealthy: {url} answered HTTP {status}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
