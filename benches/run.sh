#!/usr/bin/env bash
# Every benchmark, in one go, from nothing: installs benches/.venv (tpchgen-cli and the peers,
# pinned in benches/peers/requirements.txt), then runs
#   cargo bench --bench commit       criterion: 10 / 1,000 / 10,000 staged files in one commit
#   cargo bench --bench end_to_end   TPC-H: DataFusion's Parquet write (the floor) vs Sluice
#                                    into Iceberg and Delta at 1, 2 and all-cores shards
#   benches/peers/run.py             Sluice vs DuckDB, pyiceberg, polars/delta-rs (wall, peak
#                                    RSS), and a sort under --memory-limit
# Extra arguments go to run.py (e.g. --sf 10 --repeat 5). SLUICE_TPCH_SF sets the end-to-end
# scale factor (default 1). TPC-H data lands in $CARGO_TARGET_DIR/tpch/, never in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
[ -x benches/.venv/bin/python ] || python3 -m venv benches/.venv
benches/.venv/bin/pip install --quiet --disable-pip-version-check -r benches/peers/requirements.txt
export SLUICE_TPCHGEN="$PWD/benches/.venv/bin/tpchgen-cli"
cargo build --locked --release --bin sluice
cargo bench --locked --bench commit
cargo bench --locked --bench end_to_end
benches/.venv/bin/python benches/peers/run.py --sf "${SLUICE_TPCH_SF:-1}" --sluice "$CARGO_TARGET_DIR/release/sluice" "$@"
