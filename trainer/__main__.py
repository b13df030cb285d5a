"""``python -m exfm_trainer <job> --config <json>``: the entrypoint of every trainer container.

Subcommands: ``fm-train``, ``vm-train`` (streaming training), ``das`` (FM inference over new
windows), ``synth`` / ``import`` (datasets), ``study`` (scaling/ablation study). Training prints
one JSON line per event (``{"event": "window", "window": 3, "ne": 0.91, ...}``) to stdout.
Exit codes: 0 done, 2 invalid config (the message names the field), 3 bad input data,
1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    expected = FMTrainJob if kind == "fm-train" else VMTrainJob
    if not isinstance(job, expected):
        print(
            f"error: invalid job config {config}:\n  - job: '{job.job}' config given to the {kind} "
            f"command; set job: {kind!r} or run `python -m exfm_trainer {job.job}`",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    from exfm_trainer.data.windows import DataError
    from exfm_trainer.train.loop import TrainingError, run_training

    try:
        run_training(job)
    except DataError as err:
        print(f"error: bad input data: {err}", file=sys.stderr)
        return EXIT_DATA
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (see module docstring)."""
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
