#!/bin/sh
# Install authsidecar from this source tree into a fresh virtual environment at $1: the exact
# steps of the Dockerfile's build stage, also run by tests/integration/test_container_recipe.py
# (no Docker engine needed to check them). Every version comes from requirements.lock: the
# build backend too (PIP_CONSTRAINT reaches pip's isolated build environment).
# Run from the repository root.
set -eu
venv="$1"
"${PYTHON:-python3}" -m venv "$venv"
export PIP_CONSTRAINT="$PWD/requirements.lock" PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install --quiet "pip==26.3"
# The client library is its own distribution (clients/python), which the server depends on.
"$venv/bin/python" -m pip install --quiet ./clients/python .
