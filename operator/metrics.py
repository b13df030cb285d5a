"""Prometheus metrics of the operator (default registry; served by :func:`serve`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS_SUBMITTED = Counter("exfm_jobs_submitted_total", "Trainer jobs submitted", ["kind"])
JOBS_FAILED = Counter("exfm_jobs_failed_total", "Trainer jobs observed failed", ["kind"])
JOBS_CANCELLED = Counter("exfm_jobs_cancelled_total", "Trainer jobs cancelled", ["kind"])
WINDOWS_PROCESSED = Counter(
    "exfm_windows_processed_total", "Windows newly committed (trained / augmented)", ["kind"]
)
RECONCILE_SECONDS = Histogram(
    "exfm_reconcile_seconds",
    "Latency of one observe-plan-apply cycle",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = Counter("exfm_reconcile_errors_total", "Reconciles that failed and will retry", ["kind"])
DEGRADED = Gauge("exfm_resources_degraded", "Resources whose Degraded condition is True", ["kind"])


def serve(port: int, addr: str = "0.0.0.0") -> object:
    """Start the ``/metrics`` HTTP endpoint in a daemon thread; returns the server (``.shutdown()``)."""
    server, _thread = start_http_server(port, addr=addr)
    return server
