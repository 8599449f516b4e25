#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the pinned independent readers (pyiceberg,
# delta-rs, DuckDB + its iceberg and delta extensions) into .venv for the interop tests and, where
# missing, the PostgreSQL server; then runs every Rust test (unit, .slt specs, integration, fault
# injection, concurrency, interop, CLI, doc tests).
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

# The PostgreSQL-backed catalog test starts a throwaway server from the machine's binaries.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "==> installing the PostgreSQL server (for the iceberg-sql on PostgreSQL test)"
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq && $sudo apt-get install -y -qq postgresql >/dev/null
fi

echo "==> cargo test"
cargo test --locked "$@"
