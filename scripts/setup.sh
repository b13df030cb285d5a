#!/usr/bin/env bash
# Set up the CPU development environment in .venv (idempotent).
#
# torchrec's metadata requires the CUDA `fbgemm-gpu`, which would overwrite fbgemm-gpu-cpu and
# break `import torchrec`; so torchrec is installed with --no-deps after its other dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
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
