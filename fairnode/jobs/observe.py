"""Prometheus metrics and health of one process (a worker, or a receiver beside its web app).

:func:`serve_metrics` starts a small HTTP server in a thread: ``GET /metrics`` (text exposition format,
from a custom collector read at scrape time) and ``GET /health`` (JSON; 503 when the process says it is
not healthy). Bound to ``jobs.metrics_bind`` (loopback by default: put it behind the site's scraper).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)


class _Collector:
    def __init__(self, collect: Callable[[], Iterable[Metric]]):
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        try:
            yield from self._collect()
        except Exception:  # a scrape reports what it can; the failure is logged
            logger.exception("metrics collection failed")


class MetricsServer:
    """The running server: ``port`` (the one bound), ``stop()``."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread):
        self._server = server
        self._thread = thread
        self.port = int(server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(
    bind: str, port: int, collect: Callable[[], Iterable[Metric]], health: Callable[[], dict[str, Any]]
) -> MetricsServer:
    """Serve ``/metrics`` and ``/health`` on ``bind:port`` (0: any free port) in a daemon thread."""
    registry = CollectorRegistry()
    registry.register(_Collector(collect))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                body, code, kind = generate_latest(registry), 200, "text/plain; version=0.0.4; charset=utf-8"
            elif self.path.split("?")[0] == "/health":
                h = health()
                code = 200 if h.get("status") == "ok" else 503
                body, kind = json.dumps(h).encode("utf-8"), "application/json"
            else:
                body, code, kind = b"not found: /metrics and /health are served here\n", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("metrics http: " + format, *args)

    server = ThreadingHTTPServer((bind, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    logger.info("metrics and health on http://%s:%d/", bind, server.server_address[1])
    return MetricsServer(server, thread)


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    """One gauge sample (with optional labels)."""
    if not labels:
        return GaugeMetricFamily(name, doc, value=value)
    g = GaugeMetricFamily(name, doc, labels=list(labels))
    g.add_metric(list(labels.values()), value)
    return g


def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    """One counter sample (with optional labels)."""
    if not labels:
        return CounterMetricFamily(name, doc, value=value)
    c = CounterMetricFamily(name, doc, labels=list(labels))
    c.add_metric(list(labels.values()), value)
    return c
