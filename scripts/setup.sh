#!/usr/bin/env bash
# Set up the CPU development environment in .venv (idempotent).
#
# torchrec's metadata requires the CUDA `fbgemm-gpu`, which would overwrite fbgemm-gpu-cpu and
# break `import torchrec`; so torchrec is installed with --no-deps after its other dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
# The checkout holds a folder named `operator`; without this, `python -m ...` run from here would
# import it instead of the standard library's `operator` module (Python >= 3.11).
export PYTHONSAFEPATH=1
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# checkov (tests/test_helm_manifests.py) gets its own venv: its pins (boto3, networkx, packaging...)
# conflict with the training stack's.
CHECKOV_VENV=${CHECKOV_VENV:-.venv-checkov}
checkov_want=$(sha256sum requirements/checkov.txt | cut -d' ' -f1)
if [ ! -x "$CHECKOV_VENV/bin/checkov" ] || [ "$(cat "$CHECKOV_VENV/.exfm-setup" 2>/dev/null)" != "$checkov_want" ]; then
  echo "setup: installing checkov into $CHECKOV_VENV..."
  # Run from / so that `python -m` does not import the repository's operator/ as the stdlib `operator`.
  ck_venv=$(realpath -m "$CHECKOV_VENV"); ck_reqs=$(realpath requirements/checkov.txt)
  [ -x "$ck_venv/bin/python" ] || (cd / && "$PY" -m venv "$ck_venv")
  (cd / && "$ck_venv/bin/python" -m pip --disable-pip-version-check -q install -r "$ck_reqs" 2>&1) \
    | grep -v '^WARNING: Location' || true
  "$ck_venv/bin/checkov" --version >/dev/null
  echo "$checkov_want" > "$ck_venv/.exfm-setup"
fi
stamp="$VENV/.exfm-setup"
want=$(cat requirements/*.txt pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi
echo "setup: installing the CPU training stack into $VENV (torch, fbgemm-gpu-cpu, torchrec)..."
"${PIP[@]}" install -U pip 2>&1 | grep -v '^WARNING: Location' || true
"${PIP[@]}" install -r requirements/cpu.txt 2>&1 | grep -v '^WARNING: Location' || true
"${PIP[@]}" install --no-deps torchrec==1.8.0 2>&1 | grep -v '^WARNING: Location' || true
echo "setup: installing the control plane and test tools..."
"${PIP[@]}" install -r requirements/base.txt -r requirements/dev.txt 2>&1 | grep -v '^WARNING: Location' || true
"${PIP[@]}" install --no-deps -e . 2>&1 | grep -vE '^WARNING: Location|BuildBackendWarning|^\s' || true
"$VENV/bin/python" - <<'PY'
import fbgemm_gpu, torch, torchrec  # noqa: F401  (fails loudly if the CUDA fbgemm-gpu slipped in)
import exfm_operator, exfm_trainer  # noqa: F401
print(f"setup: ok (torch {torch.__version__}, torchrec {torchrec.__version__})")
PY
echo "$want" > "$stamp"
