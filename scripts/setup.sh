#!/usr/bin/env bash
# Creates .venv and installs das_train into it, once. Sourced by run.sh and test.sh so that
# a newcomer's two commands work on a fresh machine.
#
# torch is installed first at an exact CPU-friendly pin when no torch is present: an open
# range in pyproject.toml would otherwise pull a multi-GB CUDA build. With torch in place,
# the range in pyproject.toml is already satisfied and pip installs nothing more for it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DAS_TRAIN_VENV:-$ROOT/.venv}"
STAMP="$VENV/.das_train-installed"
TORCH_PIN="${DAS_TRAIN_TORCH_PIN:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

# Reinstall when the project's dependency list changed since the last install.
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    return 0 2>/dev/null || exit 0
fi

"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing $TORCH_PIN"
    "$PY" -m pip install -q "$TORCH_PIN"
fi
echo "[setup] installing das_train with its dev extras"
"$PY" -m pip install -q -e "$ROOT[dev]"
# pyvene 0.1.8 is the second oracle of the tests and the incumbent of the benchmark. Its
# declared dependencies (plotnine, ipywidgets, datasets, ...) are not needed for what we use,
# so it is installed without them; the tests that use it skip when it is absent.
if ! "$PY" -c "import pyvene" >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-deps "pyvene==0.1.8" || echo "[setup] pyvene not installed; its oracle tests will skip"
fi
echo "$WANT" > "$STAMP"
