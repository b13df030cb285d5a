"""Command-line entry points of the data layer: ``synth`` and ``import``.

``python -m exfm_trainer.data.cli synth --out DIR`` or ``... import criteo|table ...``. Each prints
the resulting :class:`DatasetRef` as JSON (paste it into a job config's ``dataset``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from exfm_trainer.data.vocab import DEFAULT_VOCABULARY_THRESHOLD
from exfm_trainer.data.windows import DataError
from exfm_trainer.errors import report_error
from exfm_trainer.jobs import DatasetRef
from exfm_trainer.schema import FeatureSchema

VOCAB_HELP = (
    "Hashed categorical columns with at most this many distinct values get a vocabulary "
    "(one row per value, no collisions); 0: keep hashing every column."
)


def _os_error(err: OSError) -> str:
    """An OS error of the storage as one line naming the path and the fix."""
    where = f"{err.filename}: " if err.filename is not None else ""
    return f"{where}{err.strerror or err}: the dataset root must be writable (check its path/permissions)"


def _print_ref(ref: DatasetRef, extra: dict | None = None) -> None:
    out = {"dataset": ref.model_dump(mode="json", by_alias=True), **(extra or {})}
    print(json.dumps(out, indent=2))


def _verticals(text: str) -> int | list[str]:
    return int(text) if text.isdigit() else [v.strip() for v in text.split(",") if v.strip()]


def _shares(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not name=share (e.g. shop=0.05)") from None
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{part!r} is not name=share (e.g. shop=0.05)")
    return out


def synth_parser() -> argparse.ArgumentParser:
    """Arguments of ``synth``."""
    p = argparse.ArgumentParser(prog="exfm synth", description="Write a synthetic multi-vertical ads stream.")
    p.add_argument("--out", required=True, help="Dataset root (path or s3://bucket/prefix).")
    p.add_argument("--windows", type=int, default=12)
    p.add_argument("--rows-per-window", type=int, default=20_000)
    p.add_argument("--verticals", type=_verticals, default=4, help="A count, or comma-separated names.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-drift", action="store_true", help="Disable CTR drift over windows.")
    p.add_argument("--users", type=int, default=None, help="Users alive at window 0.")
    p.add_argument("--base-ctr", type=float, default=0.05)
    p.add_argument(
        "--vertical-share",
        type=_shares,
        default={},
        help="Pin verticals' traffic shares, e.g. shop=0.05 (comma-separated name=share).",
    )
    p.add_argument("--config", type=Path, default=None, help="SyntheticConfig JSON (overrides flags).")
    p.add_argument("--overwrite", action="store_true", help="Replace a dataset written by another config.")
    return p


def main_synth(argv: Sequence[str] | None = None) -> int:
    """``synth``: generate the synthetic stream; prints the DatasetRef JSON. Returns an exit code."""
    from exfm_trainer.data.synthetic import SyntheticConfig, generate

    args = synth_parser().parse_args(argv)
    try:
        if args.config:
            config = SyntheticConfig.model_validate_json(args.config.read_text())
        else:
            config = SyntheticConfig(
                windows=args.windows,
                rows_per_window=args.rows_per_window,
                verticals=args.verticals,
                seed=args.seed,
                drift=not args.no_drift,
                users=args.users,
                base_ctr=args.base_ctr,
                vertical_share=args.vertical_share,
            )
        start = time.perf_counter()
        ref = generate(args.out, config, overwrite=args.overwrite)
    except (DataError, ValueError) as err:
        return report_error("BadInputData", f"exfm synth: {err}", 2)
    except OSError as err:
        return report_error("StorageError", f"exfm synth: {_os_error(err)}", 1)
    _print_ref(ref, {"windows": config.windows, "seconds": round(time.perf_counter() - start, 3)})
    return 0


def import_parser() -> argparse.ArgumentParser:
    """Arguments of ``import criteo|table``."""
    p = argparse.ArgumentParser(prog="exfm import", description="Import raw files into windowed Parquet.")
    sub = p.add_subparsers(dest="kind", required=True)
    c = sub.add_parser("criteo", help="Criteo TSV: windows of N rows in file order.")
    c.add_argument("--input", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--rows-per-window", type=int, required=True)
    c.add_argument("--max-rows", type=int, default=None)
    c.add_argument("--hash-buckets", type=int, default=100_000)
    c.add_argument("--embedding-dim", type=int, default=16)
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--vocabulary-threshold", type=int, default=DEFAULT_VOCABULARY_THRESHOLD, help=VOCAB_HELP)
    t = sub.add_parser("table", help="CSV/TSV/Parquet with a schema: windows by event time.")
    t.add_argument("--input", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--schema", type=Path, required=True, help="FeatureSchema JSON (with `timestamp`).")
    t.add_argument("--window-seconds", type=int, default=86_400)
    t.add_argument("--origin", type=int, default=None, help="Start of window 0 (epoch s); default: earliest.")
    t.add_argument("--format", choices=["csv", "tsv", "parquet"], default=None)
    t.add_argument("--multi-value-sep", default="|")
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--vocabulary-threshold", type=int, default=DEFAULT_VOCABULARY_THRESHOLD, help=VOCAB_HELP)
    return p


def main_import(argv: Sequence[str] | None = None) -> int:
    """``import criteo|table``: prints the DatasetRef JSON and rows per window. Returns an exit code."""
    from exfm_trainer.data.importers import import_criteo, import_table

    args = import_parser().parse_args(argv)
    try:
        if args.kind == "criteo":
            ref, rows = import_criteo(
                args.input,
                args.out,
                args.rows_per_window,
                max_rows=args.max_rows,
                hash_buckets=args.hash_buckets,
                embedding_dim=args.embedding_dim,
                overwrite=args.overwrite,
                vocabulary_threshold=args.vocabulary_threshold,
            )
        else:
            try:
                schema = FeatureSchema.model_validate_json(args.schema.read_text())
            except FileNotFoundError:
                raise DataError(f"schema file {args.schema} does not exist") from None
            ref, rows = import_table(
                args.input,
                args.out,
                schema,
                window_seconds=args.window_seconds,
                origin=args.origin,
                fmt=args.format,
                multi_value_sep=args.multi_value_sep,
                overwrite=args.overwrite,
                vocabulary_threshold=args.vocabulary_threshold,
            )
    except (DataError, ValueError) as err:
        return report_error("BadInputData", f"exfm import: {err}", 2)
    except OSError as err:
        return report_error("StorageError", f"exfm import: {_os_error(err)}", 1)
    _print_ref(ref, {"rows_per_window": {str(k): v for k, v in rows.items()}})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``synth ...`` or ``import ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("synth", "import"):
        print("usage: python -m exfm_trainer.data.cli {synth,import} ...", file=sys.stderr)
        return 2
    return main_synth(argv[1:]) if argv[0] == "synth" else main_import(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
