"""Issue 11 on `exfm run`: the workdir lock before any write, dataset checks before any job, an exit
code when nothing can run, serialised imports, one-line storage errors. Fast: no training job runs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exfm_operator.cli import app
from exfm_operator.local.datasets import DatasetTask, _import, import_lock
from exfm_operator.local.progress import make_reporter
from exfm_operator.local.runner import EXIT_STALLED, unprocessed_windows
from exfm_operator.local.workdir import Workdir
from exfm_operator.planner.world import CheckpointInfo, DASWindowInfo, World
from exfm_trainer.schema import FeatureSchema

FM = """\
apiVersion: exfm.io/v1alpha1
kind: FoundationModel
metadata: {name: teacher}
spec:
  dataset:
    uri: s3://exfm/data
    synthetic: {windows: 3, rows_per_window: 200, verticals: 2, seed: 1}
  storage: {uri: s3://exfm/run}
  preset: tiny
  cadence: {windowsPerJob: 8}
"""

CSV_PIPELINE = """\
apiVersion: local.exfm.io/v1alpha1
kind: Dataset
metadata: {name: clicks}
spec:
  uri: s3://exfm/clicks
  import: {path: clicks.csv, windowSeconds: 3600}
---
apiVersion: exfm.io/v1alpha1
kind: FoundationModel
metadata: {name: fm}
spec:
  dataset:
    uri: s3://exfm/clicks
    schema: {label: click, timestamp: ts, vertical: site, dense: [x], sparse: [{name: user, hash_buckets: 8}]}
  storage: {uri: s3://exfm/run}
  preset: tiny
---
apiVersion: exfm.io/v1alpha1
kind: DataAugmentation
metadata: {name: das}
spec:
  fmRef: {name: fm}
---
apiVersion: exfm.io/v1alpha1
kind: VerticalModel
metadata: {name: news}
spec:
  dasRef: {name: das}
  vertical: nws
"""


def _csv(path: Path, rows: int = 20) -> None:
    lines = ["ts,click,site,user,x"]
    lines += [
        f"{1_700_000_000 + 60 * i},{i % 2},{'news' if i % 3 else 'shop'},u{i % 5},{i / 10}"
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_a_refused_run_writes_nothing_into_the_busy_workdir(tmp_path: Path) -> None:
    manifest = tmp_path / "fm.yaml"
    manifest.write_text(FM)
    wd = Workdir(tmp_path / "wd")
    with wd.locked():
        before = sorted(p.name for p in wd.root.iterdir())
        result = CliRunner().invoke(app, ["run", "-f", str(manifest), "--workdir", str(wd.root), "-q"])
        after = sorted(p.name for p in wd.root.iterdir())
    assert result.exit_code == 4, result.output
    assert "another `exfm run`" in result.stderr and "nothing was written" in result.stderr
    assert before == after == [".run.lock"]  # no manifests.json, run.json, storage or import


def test_nothing_can_run_exits_3_and_says_why(tmp_path: Path) -> None:
    manifest = tmp_path / "fm.yaml"
    manifest.write_text(FM)  # an open range waiting for 8 windows per job; only 3 exist
    result = CliRunner().invoke(
        app, ["run", "-f", str(manifest), "--workdir", str(tmp_path / "wd"), "--json"]
    )
    assert result.exit_code == EXIT_STALLED == 3, result.output
    summary = [json.loads(x) for x in result.stdout.splitlines() if '"summary"' in x][-1]
    assert summary["exit_code"] == 3
    reason = summary["reason"]
    assert reason.startswith("nothing more can run: fm/teacher: 3 ready window(s) [0, 3) not processed")
    assert "(0/8 windows of the next job ready)" in reason or "3/8" in reason


def test_unprocessed_windows_per_kind() -> None:
    from datetime import UTC, datetime

    import yaml

    from exfm_operator.api import parse_resource

    docs = list(yaml.safe_load_all(CSV_PIPELINE))[1:]
    docs[2]["spec"]["vertical"] = "news"
    res = [parse_resource(d) for d in docs]
    fm, das, vm = res
    now = datetime.now(tz=UTC)
    ck = CheckpointInfo(version="00001", windows=(0, 1), last_window=1, uri="x")
    # FM: window 3 is ready after a gap at 2: it waits, with windows left
    assert unprocessed_windows(fm, World(now=now, data_windows=(0, 1, 3), fm_checkpoints=(ck,))) == [3]
    # DAS: window 0 is never augmentable; 2 and 3 are left
    das_done = (DASWindowInfo(window=1, fm_version="00000", fm_last_window=0, staleness=0),)
    ck0 = CheckpointInfo(version="00000", windows=(0,), last_window=0, uri="x")
    assert unprocessed_windows(
        das, World(now=now, data_windows=(0, 1, 2, 3), fm_checkpoints=(ck0,), das_windows=das_done)
    ) == [2, 3]
    # VM: every committed DAS window trained: nothing left
    vm_ck = CheckpointInfo(version="00001", windows=(1,), last_window=1, uri="x")
    assert unprocessed_windows(vm, World(now=now, das_windows=das_done, vm_checkpoints=(vm_ck,))) == []


def test_run_checks_the_vertical_against_the_imported_values(tmp_path: Path) -> None:
    _csv(tmp_path / "clicks.csv")
    (tmp_path / "p.yaml").write_text(CSV_PIPELINE)
    ok = CliRunner().invoke(app, ["validate", "-f", str(tmp_path / "p.yaml")])
    assert ok.exit_code == 0, ok.output  # the schema declares no vocabulary: unknown before the import
    wd = tmp_path / "wd"
    result = CliRunner().invoke(app, ["run", "-f", str(tmp_path / "p.yaml"), "--workdir", str(wd), "-q"])
    assert result.exit_code == 2, result.output
    assert "spec.vertical: vertical 'nws' not in [news, shop]" in result.stderr
    assert "did you mean 'news'?" in result.stderr
    assert not (wd / "jobs" / "jobs.json").exists()  # no job was submitted
    info = json.loads((wd / "storage" / "exfm" / "clicks" / "dataset.json").read_text())
    assert info["verticals"] == ["news", "shop"] and info["complete"] is True


def test_imports_into_one_root_are_serialised(tmp_path: Path) -> None:
    for name in ("a.csv", "b.csv"):
        _csv(tmp_path / name, rows=10 if name == "a.csv" else 12)
    schema = FeatureSchema(label="click", timestamp="ts", dense=["x"], sparse=[{"name": "user"}])
    root = str(tmp_path / "root")

    def task(name: str) -> DatasetTask:
        return DatasetTask(
            label=f"Dataset {name}", uri=root, source="import", import_path=tmp_path / name,
            import_options={
                "window_seconds": 3600, "origin": None, "format": None, "vocabulary_threshold": 1000,
            },
            schema=schema,
        )  # fmt: skip

    outcome: dict[str, str] = {}

    def run(name: str) -> None:
        try:
            _import(task(name), make_reporter(True, False))
            outcome[name] = "ok"
        except Exception as err:
            outcome[name] = str(err)

    with import_lock(root):  # another importer holds the root: this one waits for it
        t = threading.Thread(target=run, args=("a.csv",))
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and not (tmp_path / "root" / "_IMPORTED.json").exists()
    t.join(60)
    assert outcome == {"a.csv": "ok"}
    run("b.csv")  # a second source into the same root is refused, never mixed in
    assert "already holds windows imported from another file" in outcome["b.csv"]


def test_an_unwritable_store_is_one_line(tmp_path: Path) -> None:
    """A storage root that cannot be created (a file is in the way, as a read-only mount would be)."""
    manifest = tmp_path / "fm.yaml"
    manifest.write_text(FM)
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(
        app,
        [
            "run",
            "-f",
            str(manifest),
            "--workdir",
            str(tmp_path / "wd"),
            "--storage",
            str(blocker / "s"),
            "-q",
        ],
    )
    assert result.exit_code == 1, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert "store" in lines[0] and "Not a directory" in lines[0] and "Traceback" not in result.stderr


def test_unexpected_errors_are_one_line_unless_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from exfm_operator.cli import main

    manifest = tmp_path / "fm.yaml"
    manifest.write_text(FM)
    (tmp_path / "file").write_text("x")
    argv = ["exfm", "run", "-f", str(manifest), "--workdir", str(tmp_path / "file" / "wd"), "-q"]
    monkeypatch.setattr("sys.argv", argv)
    monkeypatch.setenv("EXFM_DEBUG", "0")  # restored after the test (--debug sets it)
    with pytest.raises(SystemExit) as ex:
        main()
    assert ex.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"error: {tmp_path / 'file' / 'wd'}: Not a directory (run `exfm --debug ...` for the traceback)"
    ]
    monkeypatch.setattr("sys.argv", [argv[0], "--debug", *argv[1:]])
    with pytest.raises(NotADirectoryError):
        main()


def test_a_known_complete_import_runs_its_last_short_chunk(tmp_path: Path) -> None:
    """Issue 11, item 7: an open range over an imported (complete) stream is planned up to its last
    window, so a chunk shorter than cadence.windowsPerJob runs instead of waiting forever."""
    from datetime import UTC, datetime

    from exfm_operator.local.datasets import materialise
    from exfm_operator.local.manifests import load_bundle, localize
    from exfm_operator.local.runner import LocalRunner
    from exfm_operator.planner import SubmitJob

    _csv(tmp_path / "clicks.csv", rows=200)  # 60 s apart: 200 minutes = 4 one-hour windows
    text = CSV_PIPELINE.replace("  preset: tiny\n", "  preset: tiny\n  cadence: {windowsPerJob: 8}\n", 1)
    (tmp_path / "p.yaml").write_text(text.replace("vertical: nws", "vertical: news"))
    bundle = localize(load_bundle([tmp_path / "p.yaml"]), str(tmp_path / "store"))
    reporter = make_reporter(True, False)
    ready = materialise(bundle, reporter)
    (windows,) = ready.values()
    assert windows == [0, 1, 2, 3]
    runner = LocalRunner(bundle, Workdir(tmp_path / "wd").ensure(), reporter)
    fm = bundle.of_kind("FoundationModel")[0]
    assert fm.spec.windows.end is None
    world = World(now=datetime.now(tz=UTC), data_windows=tuple(windows))
    submits = runner.plan(fm, world).of_type(SubmitJob)
    assert [s.windows for s in submits] == [(0, 4)]  # not "waiting for window 4 (4/8 ready)"
    assert submits[0].config["windows"] == {"start": 0, "end": 4}
