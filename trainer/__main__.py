"""``python -m exfm_trainer <job> --config <json>``: the entrypoint of every trainer container.

Subcommands: ``fm-train``, ``vm-train`` (streaming training), ``das`` (FM inference over new
windows), ``synth`` / ``import`` (datasets), ``study`` (scaling/ablation study). Training prints
one JSON line per event (``{"event": "window", "window": 3, "ne": 0.91, ...}``) to stdout.
Exit codes: 0 done, 2 invalid config (the message names the field), 3 bad input data,
1 anything else. A failing job ends with a structured error event on stdout
(:mod:`exfm_trainer.errors`); an unexpected exception also prints its traceback on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from exfm_trainer.errors import report_error

EXIT_CONFIG = 2
EXIT_DATA = 3

_DELEGATED = {
    "das": ("exfm_trainer.das", "main"),
    "synth": ("exfm_trainer.data.cli", "main_synth"),
    "import": ("exfm_trainer.data.cli", "main_import"),
    "study": ("exfm_trainer.study", "main"),
}


def _train(kind: str, config: str) -> int:
    from exfm_trainer.jobs import FMTrainJob, JobConfigError, VMTrainJob, load_job

    try:
        job = load_job(config)
    except JobConfigError as err:
        return report_error("InvalidConfig", str(err), EXIT_CONFIG)
    expected = FMTrainJob if kind == "fm-train" else VMTrainJob
    if not isinstance(job, expected):
        return report_error(
            "InvalidConfig",
            f"invalid job config {config}: job: '{job.job}' config given to the {kind} "
            f"command; set job: {kind!r} or run `python -m exfm_trainer {job.job}`",
            EXIT_CONFIG,
        )
    from exfm_trainer.data.windows import DataError
    from exfm_trainer.storage import StorageError
    from exfm_trainer.train.loop import TrainingError, run_training

    try:
        run_training(job)
    except DataError as err:
        return report_error("BadInputData", f"bad input data: {err}", EXIT_DATA)
    except TrainingError as err:
        return report_error("TrainingFailed", str(err), 1)
    except StorageError as err:
        return report_error("StorageError", str(err), 1)
    return 0


def _unexpected(err: BaseException) -> int:
    """An exception no layer turned into a message: traceback on stderr, one-line event last."""
    traceback.print_exc(file=sys.stderr)
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or type(err).__name__}"
        return report_error("StorageError", f"{text} (check the path/permissions of the storage)", 1)
    return report_error("InternalError", f"{type(err).__name__}: {err}", 1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (see module docstring)."""
    try:
        return _main(argv)
    except Exception as err:
        return _unexpected(err)


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m exfm_trainer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("fm-train", "train the foundation model"), ("vm-train", "train a vertical model")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="job config JSON (see exfm_trainer.jobs)")
    for name in _DELEGATED:
        sub.add_parser(name, help=f"see `python -m exfm_trainer {name} --help`", add_help=False)
    if argv and argv[0] in _DELEGATED:
        module_name, func = _DELEGATED[argv[0]]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                print(
                    f"error: `{argv[0]}` is not available in this build ({module_name} missing)",
                    file=sys.stderr,
                )
                return 1
            raise
        return int(getattr(module, func)(argv[1:]) or 0)
    args = parser.parse_args(argv)
    return _train(args.command, args.config)


if __name__ == "__main__":
    sys.exit(main())
