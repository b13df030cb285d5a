"""``exfm``: run the ExFM pipeline locally (``run``, ``status``, ``report``) or in a cluster (``operator``).

Exit codes (docs/local.md): 0 ok, 1 a resource failed / runtime error, 2 invalid manifests or usage,
3 nothing could run (ready windows wait on something that will not come), 4 the workdir is in use
by another ``exfm run``, 124 stopped at ``--max-minutes``, 130 interrupted (Ctrl-C; re-run to resume).
An unexpected error prints one line; ``exfm --debug ...`` (or ``EXFM_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from exfm_operator import __version__

app = typer.Typer(
    name="exfm",
    help="ExFM: external distillation from a foundation model to vertical models, on Kubernetes or locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_BUSY = 4
DEBUG_ENV = "EXFM_DEBUG"
DEFAULT_WORKDIR = Path(".exfm")

FilesOpt = Annotated[
    list[Path],
    typer.Option("--filename", "-f", help="Manifest file or directory (*.yaml); repeatable."),
]
WorkdirOpt = Annotated[
    Path, typer.Option("--workdir", "-w", help="Local state: storage, job registry, statuses, events.")
]


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _load(files: list[Path], json_out: bool) -> Any:
    from exfm_operator.api import ManifestError
    from exfm_operator.local.manifests import load_bundle

    try:
        return load_bundle(list(files))
    except ManifestError as err:
        if json_out:
            print(json.dumps({"event": "invalid", "problems": err.problems}), flush=True)
        _err(f"error: {len(err.problems)} problem(s) in the manifests; nothing was started:")
        for problem in err.problems:
            _err(f"  - {problem}")
        raise typer.Exit(EXIT_INVALID) from None


# ------------------------------------------------------------------------------------------ run


@app.command()
def run(
    files: FilesOpt,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Artifact root (path or s3://bucket/prefix): every manifest URI is rebased under it. "
            "Default: <workdir>/storage, or the manifests' own s3:// URIs when an S3 endpoint is set.",
            envvar="EXFM_STORAGE",
        ),
    ] = None,
    s3_endpoint: Annotated[
        str | None,
        typer.Option(
            help="S3/MinIO endpoint (host:port or URL); credentials from EXFM_S3_ACCESS_KEY/"
            "EXFM_S3_SECRET_KEY or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.",
            envvar="EXFM_S3_ENDPOINT",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON lines events on stdout.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between reconcile passes.", min=0.05)] = 1.0,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop (cancelling jobs, resumable) after this many minutes.", min=0)
    ] = None,
    max_parallel: Annotated[
        int | None, typer.Option(help="Jobs running at once (default: CPU cores, at least 2).", min=1)
    ] = None,
) -> None:
    """Run the pipeline in the manifests on this machine until every ready window is processed.

    Same manifests and planner as the operator; jobs are TorchX local_cwd processes. Ctrl-C cancels
    the running jobs; re-running the same command resumes without redoing committed windows.
    """
    from exfm_operator.local.workdir import Workdir, WorkdirBusy

    bundle = _load(files, json_out)
    wd = Workdir(workdir)
    try:
        with wd.locked():
            result = _run_locked(
                files, bundle, wd, storage, s3_endpoint, quiet, json_out, poll, max_minutes, max_parallel
            )
    except WorkdirBusy as err:
        _err(f"error: {err}")
        raise typer.Exit(EXIT_BUSY) from None
    raise typer.Exit(result.exit_code)


def _run_locked(
    files: list[Path],
    bundle: Any,
    wd: Any,
    storage: str | None,
    s3_endpoint: str | None,
    quiet: bool,
    json_out: bool,
    poll: float,
    max_minutes: float | None,
    max_parallel: int | None,
) -> Any:
    """The body of ``exfm run``, with the workdir lock held (nothing is written before it)."""
    from exfm_operator.local.datasets import DatasetError, check_dataset_values, materialise
    from exfm_operator.local.manifests import localize
    from exfm_operator.local.progress import make_reporter
    from exfm_operator.local.runner import LocalRunner, RunOptions
    from exfm_operator.local.summary import print_run_summary

    wd.ensure()
    if s3_endpoint:
        os.environ["EXFM_S3_ENDPOINT"] = s3_endpoint
    root = storage if storage else (None if s3_endpoint else str(wd.storage_dir))
    local = localize(bundle, root)
    wd.save_manifests(
        [r.to_json() for r in local.resources]
        + [d.model_dump(mode="json", by_alias=True) for d in local.datasets]
    )
    wd.save_run(
        {
            "storage": root,
            "files": [str(f) for f in files],
            "started": time.time(),
            "version": __version__,
        }
    )
    cores = os.cpu_count() or 2
    parallel = max_parallel or max(2, cores)
    job_env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, cores // parallel)))}
    reporter = make_reporter(quiet, json_out)
    with reporter:
        try:
            materialise(local, reporter)
            problems = check_dataset_values(local)
        except DatasetError as err:
            reporter.error(f"error: {err}")
            raise typer.Exit(1) from None
        if problems:
            for problem in problems:
                reporter.error(f"error: {problem}")
            raise typer.Exit(EXIT_INVALID)
        runner = LocalRunner(
            local,
            wd,
            reporter,
            RunOptions(poll_s=poll, max_minutes=max_minutes, max_parallel=parallel, job_env=job_env),
        )
        try:
            result = runner.run()
        except RuntimeError as err:
            reporter.error(f"error: {err}")
            raise typer.Exit(1) from None
        print_run_summary(reporter, wd, local, result)
    return result


@app.command()
def validate(
    files: FilesOpt,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Validate manifests (same API models and reference checks as `exfm run`); start nothing."""
    bundle = _load(files, json_out)
    names = [f"{r.kind}/{r.metadata.namespace}/{r.metadata.name}" for r in bundle.resources]
    names += [f"Dataset/{d.metadata.namespace}/{d.metadata.name}" for d in bundle.datasets]
    if json_out:
        print(json.dumps({"valid": True, "resources": names}))
    else:
        print(f"ok: {len(names)} resource(s) valid: {', '.join(names)}")


# ------------------------------------------------------------------------------------ status


@app.command()
def status(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """Show each resource's status, like `kubectl get fm,das,vm` (from the last `exfm run`)."""
    from rich.console import Console
    from rich.table import Table

    from exfm_operator.local.status import COLUMNS, status_rows, table_cells
    from exfm_operator.local.workdir import Workdir

    if output not in ("table", "json"):
        _err(f"error: --output must be table or json, got {output!r}")
        raise typer.Exit(EXIT_INVALID)
    wd = Workdir(workdir)
    rows = status_rows(wd.load_statuses())
    if output == "json":
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        _err(f"no resources in {wd.root} yet: run `exfm run -f <manifests> --workdir {workdir}` first")
        raise typer.Exit(1)
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in COLUMNS:
        table.add_column(col, no_wrap=True)
    for row in rows:
        table.add_row(*table_cells(row))
    Console(width=200).print(table)


# ------------------------------------------------------------------------------------ report


@app.command()
def report(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.md and PNGs (default <workdir>/report).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help='Print only {"vms": {...}, "fm": {...}} and write no files.')
    ] = False,
) -> None:
    """NE per window per VM (ExFM vs its baseline), FM staleness per DAS window, time per job.

    A VM with distillation.mode none is the baseline of the VMs of the same vertical (or of those
    named in its exfm.io/baseline-for annotation). NE values are means over the second half of the
    windows both models evaluated.
    """
    from exfm_operator.api import KINDS
    from exfm_operator.local.report import collect, resource_infos, write_report
    from exfm_operator.local.workdir import Workdir

    wd = Workdir(workdir)
    docs = [d for d in wd.load_manifests() if d.get("kind") in KINDS]
    if not docs:
        _err(f"no run in {wd.root}: run `exfm run -f <manifests> --workdir {workdir}` first")
        raise typer.Exit(1)
    resources = [KINDS[d["kind"]].model_validate(d) for d in docs]
    data = collect(resource_infos(resources), wd.load_events())
    if json_out:
        print(json.dumps(data.summary()))
        return
    md = write_report(data, out or wd.root / "report")
    print(f"report: {md}")
    for name, row in data.vms.items():
        b, e = row["baseline_ne"], row["exfm_ne"]
        if b is not None and e is not None:
            print(
                f"  {name}: NE {e:.4f} vs baseline {b:.4f} ({(b - e) / b * 100:+.2f}%) "
                f"over {row['windows']} windows"
            )


# ------------------------------------------------------------------------------ cluster side


@app.command()
def crds(
    out: Annotated[Path | None, typer.Option(help="Write one YAML file per CRD into this folder.")] = None,
) -> None:
    """Print (or write) the CustomResourceDefinitions generated from the API models."""
    from exfm_operator.api.crd import render_crds, write_crds

    if out is not None:
        for path in write_crds(out):
            print(path)
        return
    print("\n---\n".join(text.strip() for text in render_crds().values()))


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch these namespaces (default: all).")
    ] = None,
    liveness: Annotated[
        str | None, typer.Option(help="Liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port.")] = None,
) -> None:
    """Run the Kopf operator (in a cluster or against a kubeconfig); settings from EXFM_* env."""
    from exfm_operator.kopf_app import run_operator

    run_operator(namespaces=list(namespace or []), liveness=liveness, metrics_port=metrics_port)


@app.command()
def version() -> None:
    """Print the version."""
    print(f"exfm {__version__}")


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.", envvar=DEBUG_ENV)
    ] = False,
) -> None:
    """ExFM: external distillation from a foundation model to vertical models."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def main() -> None:
    """Console-script entry point: an unexpected error is one line (``--debug``: the traceback)."""
    try:
        app()
    except Exception as err:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in sys.argv[1:]:
            raise
        _err(f"error: {one_line(err)} (run `exfm --debug ...` for the traceback)")
        sys.exit(EXIT_FAILED)


def one_line(err: BaseException) -> str:
    """``err`` as one line: an OS error names its file and the cause, others their type and message."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or type(err).__name__}"
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, RuntimeError | ValueError) else f"{type(err).__name__}: {text}"


if __name__ == "__main__":
    main()
