#!/usr/bin/env bash
# Set up .venv (torch CPU build first, then sculpt[test]) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `bash scripts/test.sh -k scheduler`.
set -euo pipefail
SCULPT_EXTRAS="[test]" source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec "$PY" -m pytest -q "$@"
