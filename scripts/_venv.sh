# Sourced by quickstart.sh and test.sh: create .venv on first use and install torch (CPU build pinned first,
# so that no later requirement pulls a multi-GB CUDA build), then the project itself.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[sculpt] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PY="$ROOT/.venv/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[sculpt] installing torch==2.13.0"
  "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
EXTRAS="${SCULPT_EXTRAS:-}"
echo "[sculpt] installing sculpt${EXTRAS} (editable)"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".${EXTRAS}"
