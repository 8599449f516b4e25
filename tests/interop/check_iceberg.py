"""Reads an Iceberg table written by Sluice with two independent readers and compares every value
with what Sluice itself returned.

usage: check_iceberg.py HOME NAMESPACE TABLE EXPECTED_JSON

EXPECTED_JSON holds {"columns": [...], "rows": [[str|null, ...], ...]}: Sluice's own SELECT, each
value rendered as Arrow displays it, rows sorted. The readers:
  * pyiceberg's SqlCatalog on HOME/catalog.db (the catalog Sluice commits to);
  * DuckDB's iceberg_scan on the metadata file the catalog points at (found with sqlite3, not
    with pyiceberg, so the two readers share nothing).
Exits non-zero, printing the first differences, when a reader disagrees.
"""

import datetime
import decimal
import glob
import json
import os
import sqlite3
import sys


def render(value):
    """Renders a Python value the way Arrow displays it (what Sluice wrote into EXPECTED_JSON)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def compare(reader, columns, rows, expected):
    got = sorted(([render(v) for v in row] for row in rows), key=lambda r: [(v is None, v or "") for v in r])
    if got != expected:
        print(f"{reader}: MISMATCH ({len(got)} rows read, {len(expected)} expected)")
        shown = 0
        for index, (a, b) in enumerate(zip(got, expected)):
            if a != b and shown < 5:
                print(f"  row {index}: read {a}\n          expected {b}")
                shown += 1
        return False
    print(f"{reader}: {len(got)} rows x {len(columns)} columns match")
    return True


def extension(module, name):
    folder = os.path.dirname(module.__file__)
    return glob.glob(os.path.join(folder, "extensions", "*", f"{name}.duckdb_extension"))[0]


def main():
    home, namespace, table, expected_path = sys.argv[1:5]
    with open(expected_path) as f:
        expected = json.load(f)
    columns, rows = expected["columns"], expected["rows"]
    rows = sorted(rows, key=lambda r: [(v is None, v or "") for v in r])
    ok = True

    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("lake", uri=f"sqlite:///{home}/catalog.db", warehouse=f"file://{home}/warehouse")
    iceberg_table = catalog.load_table(f"{namespace}.{table}")
    arrow = iceberg_table.scan(selected_fields=tuple(columns)).to_arrow()
    ok &= compare("pyiceberg", columns, [[r[c] for c in columns] for r in arrow.to_pylist()], rows)
    summary = iceberg_table.current_snapshot().summary
    if "sluice.run-id" not in summary.additional_properties:
        print(f"pyiceberg: the current snapshot has no sluice.run-id: {summary}")
        ok = False

    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    with sqlite3.connect(os.path.join(home, "catalog.db")) as db:
        (metadata,) = db.execute(
            "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = 'lake' "
            "AND table_namespace = ? AND table_name = ?",
            (namespace, table),
        ).fetchone()
    con = duckdb.connect(config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
    con.execute(f"LOAD '{extension(duckdb_extension_avro, 'avro')}'")
    con.execute(f"LOAD '{extension(duckdb_extension_iceberg, 'iceberg')}'")
    selected = ", ".join(f'"{c}"' for c in columns)
    ok &= compare("duckdb", columns, con.execute(f"SELECT {selected} FROM iceberg_scan('{metadata}')").fetchall(), rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
