#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the pinned independent readers (pyiceberg,
# DuckDB + its iceberg extension) into .venv for the interop tests, then runs every Rust test
# (unit, .slt specs, integration, fault injection, interop, CLI, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=tests/interop/requirements.txt
stamp=.venv/.requirements
if ! cmp -s "$requirements" "$stamp" 2>/dev/null; then
    echo "==> installing the interop readers into .venv ($requirements)"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
fi
export SLUICE_PYTHON="$PWD/.venv/bin/python"

echo "==> cargo test"
cargo test --locked "$@"
