"""The final summary of ``exfm run``: one row per resource, from the statuses the planner wrote."""

from __future__ import annotations

from typing import Any

from exfm_operator.local.manifests import Bundle, resource_label
from exfm_operator.local.progress import Reporter
from exfm_operator.local.runner import RunResult
from exfm_operator.local.workdir import Workdir

COLUMNS = ["RESOURCE", "PHASE", "WINDOWS", "CHECKPOINT", "NE", "JOBS", "NOTE"]


def _note(status: Any) -> str:
    if status.phase in ("Failed", "Degraded") and status.last_error:
        return status.last_error[:120]
    cond = status.condition("Progressing")
    if cond is not None and cond.message and status.phase not in ("Succeeded",):
        return cond.message[:120]
    return ""


def summary_rows(bundle: Bundle) -> list[list[str]]:
    """One table row per resource of a finished local run, from its stored status."""
    rows = []
    for res in bundle.resources:
        st = res.status
        ckpt = getattr(st, "latest_checkpoint", None)
        version = ckpt.version if ckpt is not None else getattr(st, "fm_version", None)
        ne = ckpt.metrics.get("ne") if ckpt is not None else None
        c = st.counters
        rows.append(
            [
                resource_label(res),
                st.phase,
                str(c.windows_processed),
                version or "-",
                "-" if ne is None else f"{ne:.4f}",
                f"{c.jobs_succeeded} ok" + (f", {c.jobs_failed} failed" if c.jobs_failed else ""),
                _note(st),
            ]
        )
    return rows


def print_run_summary(reporter: Reporter, workdir: Workdir, bundle: Bundle, result: RunResult) -> None:
    """Hand the summary table (and its JSON form) to the reporter; errors go to stderr."""
    title = f"exfm run: {result.reason} ({result.seconds:.1f}s, {result.jobs} job(s) this run)"
    data = {
        "exit_code": result.exit_code,
        "reason": result.reason,
        "seconds": round(result.seconds, 2),
        "jobs": result.jobs,
        "workdir": str(workdir.root),
        "resources": {resource_label(r): r.status.to_json() for r in bundle.resources},
    }
    reporter.summary(title, COLUMNS, summary_rows(bundle), data)
    if result.exit_code != 0:
        reporter.error(f"exfm run: {result.reason}")
