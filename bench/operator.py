"""Operator benchmark: 300 FoundationModels created at once against the Kubernetes emulator.

``python bench/operator.py --json OUT.json`` starts the emulator (tests/k8s/emulator.py) on loopback,
runs ``exfm operator`` (``exfm_operator.kopf_app.run_operator``, kubernetes scheduler → TorchX →
Volcano jobs in the emulator, so nothing trains) in a child process, applies N CRs, and reports
``p99_create_to_submit_s`` (CR applied → its Volcano job scheduled, from the job's
``exfm.io/submitted-at`` annotation), the operator's ``rss_mb`` and ``torch_imported``.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named operator.py: keep its folder off sys.path so it never shadows the stdlib module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
GOALS = {"p99_create_to_submit_s": 1.0, "rss_mb": 250.0, "torch_imported": False}


def child(stats_file: str) -> None:
    """Run the operator; every 0.5 s write its RSS and whether torch is loaded."""
    import psutil

    from exfm_operator.kopf_app import run_operator

    threading.Thread(target=run_operator, args=(["default"],), daemon=True).start()
    proc = psutil.Process()
    peak = 0.0
    while True:
        peak = max(peak, proc.memory_info().rss / 2**20)
        Path(stats_file).write_text(json.dumps({"rss_mb": peak, "torch_imported": "torch" in sys.modules}))
        time.sleep(0.5)


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True, help="output JSON path (markdown next to it)")
    parser.add_argument("--crs", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0

    sys.path.insert(0, str(ROOT / "tests"))
    from k8s.emulator import VOLCANO, EmulatorServer
    from k8s.pipeline import FM_RES, fm_manifest, write_windows

    work = Path(tempfile.mkdtemp(prefix="exfm-bench-"))
    write_windows(work / "data", range(1))
    with EmulatorServer(work / "k8s") as k8s:
        env = {**os.environ, "KUBECONFIG": str(k8s.kubeconfig), "EXFM_SCHEDULER": "kubernetes",
               "EXFM_POLL_INTERVAL": "60", "EXFM_QUEUE": "bench"}  # fmt: skip
        stats = work / "stats.json"
        proc = subprocess.Popen(
            [sys.executable, __file__, "--json", args.json, "--child", str(stats)], env=env
        )
        try:
            while not stats.exists():
                time.sleep(0.2)
            time.sleep(2)  # let kopf list and start watching
            created: dict[str, float] = {}
            for i in range(args.crs):
                name = f"fm-{i:04d}"
                created[name] = time.time()
                k8s.apply(FM_RES, fm_manifest(name, work / "data", work / "store", end=1, per_job=1))
            deadline = time.time() + args.timeout
            latencies: dict[str, float] = {}
            while time.time() < deadline and len(latencies) < args.crs:
                for job in k8s.list(VOLCANO, "default"):
                    owner = job["metadata"]["labels"].get("exfm.io/owner-name")
                    if owner in created and owner not in latencies:
                        latencies[owner] = (
                            float(job["metadata"]["annotations"]["exfm.io/submitted-at"]) - created[owner]
                        )
                time.sleep(0.5)
            time.sleep(1)
            child_stats = json.loads(stats.read_text())
        finally:
            proc.terminate()
            proc.wait(30)
    lat = list(latencies.values())
    result = {
        "crs": args.crs,
        "submitted": len(lat),
        "p50_create_to_submit_s": round(_quantile(lat, 0.5), 3) if lat else None,
        "p99_create_to_submit_s": round(_quantile(lat, 0.99), 3) if lat else None,
        "max_create_to_submit_s": round(max(lat), 3) if lat else None,
        "rss_mb": round(child_stats["rss_mb"], 1),
        "torch_imported": child_stats["torch_imported"],
        "goals": GOALS,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    rows = "\n".join(f"| {k} | {result[k]} | {GOALS.get(k, '')} |" for k in result if k != "goals")
    out.with_suffix(".md").write_text(
        f"# Operator benchmark\n\n{args.crs} FoundationModels applied at once to the emulator; kubernetes "
        "scheduler (Volcano jobs via TorchX), one job per CR.\n\n| metric | value | goal |\n|---|---|---|\n"
        f"{rows}\n"
    )
    print(json.dumps(result, indent=2))
    return 0 if len(lat) == args.crs else 1


if __name__ == "__main__":
    sys.exit(main())
