#!/usr/bin/env bash
# The main command: sets up .venv when needed, then runs `python -m das_train` with the
# arguments given (e.g. `bash scripts/run.sh recipe=gender_tiny`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m das_train "$@"
