"""`exfm validate` / `exfm run` on invalid manifests: one clear message per problem, exit 2, no job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exfm_operator.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

GOOD = """\
apiVersion: exfm.io/v1alpha1
kind: FoundationModel
metadata: {name: teacher}
spec:
  dataset: {uri: s3://exfm/data, synthetic: {windows: 2, rows_per_window: 100}}
  storage: {uri: s3://exfm/run}
---
apiVersion: exfm.io/v1alpha1
kind: DataAugmentation
metadata: {name: augment}
spec:
  fmRef: {name: teacher}
---
apiVersion: exfm.io/v1alpha1
kind: VerticalModel
metadata: {name: feed}
spec:
  dasRef: {name: augment}
  vertical: feed
"""

# Three independent problems: an unknown kind, a VM naming a DAS that does not exist, a bad field.
BAD = """\
apiVersion: exfm.io/v1alpha1
kind: FoundationModel
metadata: {name: teacher}
spec:
  dataset: {uri: s3://exfm/data, synthetic: {windows: 2}}
  storage: {uri: s3://exfm/run}
  preset: huge
---
apiVersion: exfm.io/v1alpha1
kind: TeacherModel
metadata: {name: other}
spec: {}
---
apiVersion: exfm.io/v1alpha1
kind: DataAugmentation
metadata: {name: augment}
spec:
  fmRef: {name: teacher}
---
apiVersion: exfm.io/v1alpha1
kind: VerticalModel
metadata: {name: feed}
spec:
  dasRef: {name: no-such-das}
"""


def _write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _problems(stderr: str) -> list[str]:
    return [line.strip()[2:] for line in stderr.splitlines() if line.strip().startswith("- ")]


def test_validate_accepts_a_good_pipeline(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "-f", str(_write(tmp_path, GOOD)), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["valid"] is True
    assert "VerticalModel/default/feed" in out["resources"]


def test_validate_reports_each_schema_problem_once(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "-f", str(_write(tmp_path, BAD))])
    assert result.exit_code == 2
    problems = _problems(result.stderr)
    # Schema and cross-reference problems are reported together (issue 11, item 8); the DAS's
    # reference to the invalid FM "teacher" is not reported again.
    assert len(problems) == 3, problems
    assert any("spec.preset" in p and "teacher" in p for p in problems)
    assert any("unknown kind 'TeacherModel'" in p for p in problems)
    assert any("spec.dasRef.name" in p and "no-such-das" in p for p in problems)


def test_missing_reference_is_reported_with_the_field(tmp_path: Path) -> None:
    text = GOOD.replace("dasRef: {name: augment}", "dasRef: {name: no-such-das}").replace(
        "fmRef: {name: teacher}", "fmRef: {name: nobody}"
    )
    result = CliRunner().invoke(app, ["validate", "-f", str(_write(tmp_path, text))])
    assert result.exit_code == 2
    problems = _problems(result.stderr)
    assert len(problems) == 2, problems
    assert any(
        p.startswith('DataAugmentation "default/augment": spec.fmRef.name') and "nobody" in p
        for p in problems
    )
    assert any(
        p.startswith('VerticalModel "default/feed": spec.dasRef.name') and "no-such-das" in p
        for p in problems
    )


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("rows_per_window: 100", "rows_per_window: -5", "rows_per_window"),
        ("vertical: feed", "vertical: feed\n  distillation: {mode: none, adapter: true}", "adapter"),
        ("storage: {uri: s3://exfm/run}", "storage: {uri: 's3://key:secret@host/b'}", "spec.storage.uri"),
        ("fmRef: {name: teacher}", "fmRef: {name: teacher}\n  maxStalenes: 0", "maxStalenes"),
    ],
)
def test_bad_fields_name_the_field(tmp_path: Path, old: str, new: str, needle: str) -> None:
    assert old in GOOD
    result = CliRunner().invoke(app, ["validate", "-f", str(_write(tmp_path, GOOD.replace(old, new)))])
    assert result.exit_code == 2, result.output
    problems = _problems(result.stderr)
    assert len(problems) == 1, problems
    assert needle in problems[0]


def test_run_with_invalid_manifests_starts_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    result = CliRunner().invoke(
        app, ["run", "-f", str(_write(tmp_path, BAD)), "--workdir", str(workdir), "--json"]
    )
    assert result.exit_code == 2
    first = json.loads(result.stdout.splitlines()[0])
    assert first["event"] == "invalid" and len(first["problems"]) == 3
    # Nothing was generated, submitted or recorded.
    assert not workdir.exists()


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    broken = _write(tmp_path, "kind: [unclosed\n", "broken.yaml")
    result = CliRunner().invoke(app, ["validate", "-f", str(broken), "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    problems = _problems(result.stderr)
    assert len(problems) == 2, problems
    assert any("not valid YAML" in p for p in problems)
    assert any("no such file" in p for p in problems)


def test_dataset_document_import_path_must_exist(tmp_path: Path) -> None:
    text = (
        GOOD
        + """\
---
apiVersion: local.exfm.io/v1alpha1
kind: Dataset
metadata: {name: clicks}
spec:
  uri: s3://exfm/clicks
  import: {path: missing.csv, windowSeconds: 3600}
"""
    )
    result = CliRunner().invoke(app, ["validate", "-f", str(_write(tmp_path, text))])
    assert result.exit_code == 2
    problems = _problems(result.stderr)
    assert len(problems) == 1 and "spec.import.path" in problems[0] and "missing.csv" in problems[0]


@pytest.mark.parametrize("example", ["synthetic", "synthetic-ci", "csv"])
def test_examples_validate(example: str) -> None:
    result = CliRunner().invoke(app, ["validate", "-f", str(EXAMPLES / example)])
    assert result.exit_code == 0, result.output


def test_help_everywhere() -> None:
    for cmd in ([], ["run"], ["status"], ["report"], ["crds"], ["operator"], ["validate"], ["version"]):
        result = CliRunner().invoke(app, [*cmd, "--help"])
        assert result.exit_code == 0, (cmd, result.output)
        assert "Usage:" in result.stdout


def test_version_and_crds(tmp_path: Path) -> None:
    assert CliRunner().invoke(app, ["version"]).stdout.startswith("exfm ")
    result = CliRunner().invoke(app, ["crds", "--out", str(tmp_path / "crds")])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "crds").iterdir())
    assert len(written) == 3
    printed = CliRunner().invoke(app, ["crds"]).stdout
    assert printed.count("kind: CustomResourceDefinition") == 3


def test_the_cli_never_imports_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from exfm_operator.cli import app\n"
        "import exfm_operator.local.runner, exfm_operator.local.report, exfm_operator.local.datasets\n"
        f"r = CliRunner().invoke(app, ['validate', '-f', {str(EXAMPLES / 'synthetic')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ issue 11: hostile inputs


def test_misspelled_vertical_is_caught_against_the_synthetic_dataset(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["validate", "-f", str(_write(tmp_path, GOOD.replace("vertical: feed", "vertical: feeed")))]
    )
    assert result.exit_code == 2, result.output
    (problem,) = _problems(result.stderr)
    assert problem.startswith("VerticalModel \"default/feed\": spec.vertical: vertical 'feeed' not in [")
    assert "feed, " in problem and "did you mean 'feed'?" in problem


def test_vertical_against_a_declared_vocabulary_and_a_schema_without_vertical(tmp_path: Path) -> None:
    schema = (
        "schema: {label: click, vertical: site, dense: [x], sparse: [{name: site, vocabulary: [news, shop]}]}"
    )
    text = GOOD.replace("synthetic: {windows: 2, rows_per_window: 100}", schema)
    bad = CliRunner().invoke(
        app, ["validate", "-f", str(_write(tmp_path, text.replace("vertical: feed", "vertical: nws")))]
    )
    assert bad.exit_code == 2
    assert "vertical 'nws' not in [news, shop]" in bad.stderr and "did you mean 'news'?" in bad.stderr
    good = CliRunner().invoke(
        app, ["validate", "-f", str(_write(tmp_path, text.replace("vertical: feed", "vertical: shop")))]
    )
    assert good.exit_code == 0, good.output
    novert = text.replace("vertical: site, ", "").replace("vertical: feed", "vertical: shop")
    none = CliRunner().invoke(app, ["validate", "-f", str(_write(tmp_path, novert))])
    assert none.exit_code == 2 and "has no vertical column" in none.stderr


def test_non_utf8_manifest_and_dangling_symlink_are_one_line_each(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.yaml").write_bytes(b"kind: FoundationModel\nname: caf\xe9\n")
    (folder / "b.yaml").symlink_to(tmp_path / "gone.yaml")
    result = CliRunner().invoke(app, ["validate", "-f", str(folder)])
    assert result.exit_code == 2, result.output
    problems = _problems(result.stderr)
    assert len(problems) == 2, problems
    assert any("a.yaml: line 2: not UTF-8" in p and "save the manifest as UTF-8" in p for p in problems)
    assert any("b.yaml: cannot be read (a dangling symlink?)" in p for p in problems)
    assert "Traceback" not in result.output


def test_duplicate_yaml_keys_are_an_error(tmp_path: Path) -> None:
    text = GOOD.replace("fmRef: {name: teacher}", "fmRef: {name: teacher}\n  fmRef: {name: other}")
    result = CliRunner().invoke(app, ["validate", "-f", str(_write(tmp_path, text))])
    assert result.exit_code == 2
    (problem,) = _problems(result.stderr)
    assert "key 'fmRef' appears twice in one mapping (lines 12 and 13)" in problem


@pytest.mark.parametrize(
    ("old", "new", "hint"),
    [
        ("vertical: feed", "vertical: feed\n  distillation: {mdoe: aux}", "did you mean 'mode'?"),
        ("fmRef: {name: teacher}", "fmRef: {name: teacher}\n  maxStalenes: 0", "mean 'maxStaleness'?"),
        ("vertical: feed", "vertical: feed\n  windowsPerJob: 2", "did you mean 'cadence.windowsPerJob'?"),
    ],
)
def test_unknown_fields_suggest_the_nearest_name(tmp_path: Path, old: str, new: str, hint: str) -> None:
    result = CliRunner().invoke(app, ["validate", "-f", str(_write(tmp_path, GOOD.replace(old, new)))])
    (problem,) = _problems(result.stderr)
    assert hint in problem, problem


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ("annotations: {note: " + "x" * (300 * 1024) + "}", "more than Kubernetes' limit of 262144"),
        ("labels: {team: 'has space'}", "label 'team'"),
        ("labels: {" + "k" * 64 + ": v}", "at most 63 characters"),
    ],
)
def test_metadata_obeys_kubernetes_limits(tmp_path: Path, meta: str, needle: str) -> None:
    text = GOOD.replace("metadata: {name: feed}", "metadata:\n  name: feed\n  " + meta)
    result = CliRunner().invoke(app, ["validate", "-f", str(_write(tmp_path, text))])
    assert result.exit_code == 2, result.output
    (problem,) = _problems(result.stderr)
    assert needle in problem and "metadata." in problem


def test_did_you_mean_reaches_generator_params_and_job_configs(tmp_path: Path) -> None:
    from exfm_trainer.jobs import JobConfigError, parse_job

    text = GOOD.replace("rows_per_window: 100", "rows_per_windw: 100")
    result = CliRunner().invoke(app, ["validate", "-f", str(_write(tmp_path, text))])
    (problem,) = _problems(result.stderr)
    assert "rows_per_windw" in problem and "did you mean 'rows_per_window'?" in problem
    job = {
        "job": "fm-train",
        "storage": "/x",
        "name": "a",
        "dataset": {"uri": "/d", "schema": {"dense": ["x"]}},
    }
    with pytest.raises(JobConfigError) as err:
        parse_job({**job, "optim": {"embeding_lr": 1.0}, "batchsize": 3})
    assert "optim.embeding_lr: Extra inputs are not permitted; did you mean 'embedding_lr'?" in str(err.value)
    assert "batchsize: Extra inputs are not permitted; did you mean 'batch_size'?" in str(err.value)
