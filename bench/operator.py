"""Operator benchmark: 300 FoundationModels created at once against the Kubernetes emulator.

``python bench/operator.py --json OUT.json`` starts the emulator (tests/k8s/emulator.py) on loopback,
runs ``exfm operator`` (``exfm_operator.kopf_app.run_operator``, kubernetes scheduler → TorchX →
Volcano jobs in the emulator, so nothing trains) in a child process, applies N CRs, and reports
``p99_create_to_submit_s`` (CR applied → its Volcano job scheduled, from the job's
``exfm.io/submitted-at`` annotation), the operator's ``rss_mb`` and ``torch_imported``.
Writes OUT.json and OUT.md.

kmock (under the emulator) keeps every request in a log and matches each new request by scanning that
log, so its per-request cost grows with the requests served so far (~0.06 ms per logged request: 5 ms
at 100, 175 ms at 3000), which no API server does. ``--emulator-log bounded`` (the default) drops a
request from the log once served, so the figures measure the operator; ``--emulator-log kmock`` keeps
kmock's behaviour. ``api_requests`` counts the operator's requests by verb and resource.
"""

from __future__ import annotations

import argparse
import collections
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
    """Run the operator; every 0.1 s write its peak RSS, CPU seconds and whether torch is loaded."""
    import psutil

    from exfm_operator.kopf_app import run_operator

    threading.Thread(target=run_operator, args=(["default"],), daemon=True).start()
    proc = psutil.Process()
    peak = 0.0
    while True:
        peak = max(peak, proc.memory_info().rss / 2**20)
        cpu = sum(proc.cpu_times()[:2])
        stats = {"rss_mb": peak, "cpu_s": cpu, "torch_imported": "torch" in sys.modules}
        tmp = Path(stats_file + ".tmp")
        tmp.write_text(json.dumps(stats))
        tmp.replace(stats_file)
        time.sleep(0.1)


def _bounded_emulator_server(workdir: Path, counts: collections.Counter) -> object:
    """An ``EmulatorServer`` whose emulator forgets each request once served (counting it first)."""
    import attrs
    from k8s.emulator import EmulatorServer, ExfmKubernetesEmulator

    @attrs.define(kw_only=True)
    class BoundedLogEmulator(ExfmKubernetesEmulator):
        async def _handle(self, request: object) -> object:
            try:
                return await super()._handle(request)
            finally:
                resource = getattr(request, "resource", None)
                if resource is not None:
                    action = "WATCH" if str(request.params.get("watch", "")).lower() == "true" else None
                    counts[f"{action or request.method.value} {resource.plural}"] += 1
                log = self._requests
                for i in range(len(log) - 1, -1, -1):
                    if log[i] is request:
                        del log[i]
                        break

    return EmulatorServer(workdir, emulator_cls=BoundedLogEmulator)


def _submitted_at(k8s: object, owners: set[str]) -> dict[str, float]:
    """owner name → ``exfm.io/submitted-at`` of its Volcano job (reads only metadata, in the emulator)."""
    import kmock
    from k8s.emulator import VOLCANO

    def read() -> dict[str, float]:
        res = kmock.resource(VOLCANO)
        out = {}
        for (r, _ns, _name), obj in k8s.emulator.objects.items():
            if r != res or obj.deleted:
                continue
            meta = obj.raw.get("metadata") or {}
            owner = (meta.get("labels") or {}).get("exfm.io/owner-name")
            if owner in owners:
                out[owner] = float(meta["annotations"]["exfm.io/submitted-at"])
        return out

    return k8s.call(read)


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True, help="output JSON path (markdown next to it)")
    parser.add_argument("--crs", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--rate", type=float, default=0.0, help="CRs per second (0: all at once)")
    parser.add_argument(
        "--emulator-log", choices=("bounded", "kmock"), default="bounded",
        help="bounded: the emulator forgets served requests; kmock: its growing log (quadratic cost)",
    )  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0

    sys.path.insert(0, str(ROOT / "tests"))
    from k8s.emulator import EmulatorServer
    from k8s.pipeline import FM_RES, fm_manifest, write_windows

    work = Path(tempfile.mkdtemp(prefix="exfm-bench-"))
    write_windows(work / "data", range(1))
    counts: collections.Counter = collections.Counter()
    server = (
        _bounded_emulator_server(work / "k8s", counts)
        if args.emulator_log == "bounded"
        else EmulatorServer(work / "k8s")
    )
    with server as k8s:
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
            cpu0, emulator_cpu0 = json.loads(stats.read_text())["cpu_s"], time.process_time()
            start = time.time()
            for i in range(args.crs):
                if args.rate > 0:
                    time.sleep(max(0.0, start + i / args.rate - time.time()))
                name = f"fm-{i:04d}"
                created[name] = time.time()
                k8s.apply(FM_RES, fm_manifest(name, work / "data", work / "store", end=1, per_job=1))
            deadline = time.time() + args.timeout
            latencies: dict[str, float] = {}
            while time.time() < deadline and len(latencies) < args.crs:
                for owner, at in _submitted_at(k8s, set(created) - set(latencies)).items():
                    latencies[owner] = at - created[owner]
                time.sleep(0.5)
            emulator_cpu = time.process_time() - emulator_cpu0  # the emulator runs in this process
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
        "rate_crs_per_s": args.rate or "burst",
        "operator_cpu_s": round(child_stats["cpu_s"] - cpu0, 2),
        "emulator_cpu_s": round(emulator_cpu, 2),
        "rss_mb": round(child_stats["rss_mb"], 1),
        "torch_imported": child_stats["torch_imported"],
        "emulator_log": args.emulator_log,
        "api_requests": dict(sorted(counts.items())) if counts else None,
        "goals": GOALS,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    skip = ("goals", "api_requests")
    rows = "\n".join(f"| {k} | {result[k]} | {GOALS.get(k, '')} |" for k in result if k not in skip)
    calls = "\n".join(f"| {k} | {v} |" for k, v in (result["api_requests"] or {}).items())
    out.with_suffix(".md").write_text(
        f"# Operator benchmark\n\n{args.crs} FoundationModels applied "
        + (f"at {args.rate:g} per second" if args.rate > 0 else "at once")
        + f" to the emulator (request log: {args.emulator_log}); kubernetes scheduler (Volcano jobs via "
        "TorchX), one job per CR.\n\n| metric | value | goal |\n|---|---|---|\n"
        f"{rows}\n"
        + (
            f"\nAPI requests served (operator and kopf):\n\n| request | count |\n|---|---|\n{calls}\n"
            if calls
            else ""
        )
    )
    print(json.dumps(result, indent=2))
    return 0 if len(lat) == args.crs else 1


if __name__ == "__main__":
    sys.exit(main())
