"""Reads a table written by Sluice with two independent readers and compares every value with
what Sluice itself returned.

usage: check_table.py iceberg HOME NAMESPACE TABLE EXPECTED_JSON
       check_table.py iceberg-s3 ENDPOINT CATALOG_DB CATALOG WAREHOUSE NAMESPACE TABLE EXPECTED_JSON
       check_table.py delta TABLE_DIR EXPECTED_JSON
       check_table.py delta-s3 ENDPOINT TABLE_URL EXPECTED_JSON

EXPECTED_JSON holds {"columns": [...], "rows": [[str|null, ...], ...]}: Sluice's own SELECT, each
value rendered as Arrow displays it, and optionally "filters": [{"column", "value", "count"}]: row
counts Sluice found for `column = value`, which each reader must find too (for a partitioned table
that exercises its partition pruning, i.e. the partition values in the metadata). The readers:
  iceberg: pyiceberg's SqlCatalog on HOME/catalog.db (the catalog Sluice commits to), and DuckDB's
           iceberg_scan on the metadata file the catalog points at (found with sqlite3, not with
           pyiceberg, so the two readers share nothing);
  iceberg-s3: the same for a catalog whose warehouse is in an S3-compatible server at ENDPOINT
           (pyiceberg through pyarrow's S3 file system, DuckDB through httpfs), credentials from
           AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when set;
  delta:   delta-rs (the `deltalake` package) and DuckDB's delta_scan;
  delta-s3: the same for a table in an S3-compatible server at ENDPOINT.
Each also checks that the latest commit carries Sluice's run id. Exits non-zero, printing the
first differences, when a reader disagrees.
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
    if isinstance(value, datetime.datetime):
        # Arrow shows a UTC timestamp with its offset, a naive one without.
        text = value.replace(tzinfo=None).isoformat()
        return text + "Z" if value.tzinfo is not None else text
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def sort_key(row):
    return [(v is None, v or "") for v in row]


def compare(reader, columns, rows, expected):
    got = sorted(([render(v) for v in row] for row in rows), key=sort_key)
    if got != expected:
        print(f"{reader}: MISMATCH ({len(got)} rows read, {len(expected)} expected)")
        shown = 0
        for index, (a, b) in enumerate(zip(got, expected)):
            if a != b and shown < 5:
                print(f"  row {index}: read     {a}\n          expected {b}")
                shown += 1
        return False
    print(f"{reader}: {len(got)} rows x {len(columns)} columns match")
    return True


def duckdb_with(*names):
    """A DuckDB connection with the named extensions loaded from their pinned wheels (no network)."""
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
    for name in names:
        module = __import__(f"duckdb_extension_{name}")
        folder = os.path.dirname(module.__file__)
        path = glob.glob(os.path.join(folder, "extensions", "*", f"{name}.duckdb_extension"))[0]
        con.execute(f"LOAD '{path}'")
    return con


def check_count(reader, where, count, expected):
    if count != expected:
        print(f"{reader}: MISMATCH: {count} rows where {where}, expected {expected}")
        return False
    print(f"{reader}: {count} rows where {where}, as expected")
    return True


def check_iceberg(db, name, warehouse, namespace, table, columns, rows, filters, endpoint=None):
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import EqualTo

    ok = True
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID", "test"), os.environ.get("AWS_SECRET_ACCESS_KEY", "test")
    s3 = {}
    if endpoint:
        s3 = {"s3.endpoint": endpoint, "s3.access-key-id": key, "s3.secret-access-key": secret, "s3.region": "us-east-1"}
    catalog = SqlCatalog(name, uri=f"sqlite:///{db}", warehouse=warehouse, **s3)
    iceberg_table = catalog.load_table(f"{namespace}.{table}")
    arrow = iceberg_table.scan(selected_fields=tuple(columns)).to_arrow()
    ok &= compare("pyiceberg", columns, [[r[c] for c in columns] for r in arrow.to_pylist()], rows)
    summary = iceberg_table.current_snapshot().summary
    if "sluice.run-id" not in summary.additional_properties:
        print(f"pyiceberg: the current snapshot has no sluice.run-id: {summary}")
        ok = False
    for f in filters:
        count = iceberg_table.scan(row_filter=EqualTo(f["column"], f["value"])).to_arrow().num_rows
        ok &= check_count("pyiceberg", f"{f['column']} = {f['value']}", count, f["count"])
    # Each data file lies under the folders of its identity partition values.
    spec = iceberg_table.spec()
    identity = [p.name for p in spec.fields if str(p.transform) == "identity"]
    misplaced = [
        entry["file_path"]
        for entry in iceberg_table.inspect.files().to_pylist()
        for name in identity
        if f"/{name}={render(entry['partition'][name])}/" not in entry["file_path"]
    ]
    if misplaced:
        print(f"pyiceberg: files outside their partition folder: {misplaced[:3]}")
        ok = False

    with sqlite3.connect(db) as connection:
        (metadata,) = connection.execute(
            "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = ? "
            "AND table_namespace = ? AND table_name = ?",
            (name, namespace, table),
        ).fetchone()
    if endpoint:
        con = duckdb_with("avro", "iceberg", "httpfs")
        s3_secret(con, endpoint)
    else:
        con = duckdb_with("avro", "iceberg")
    ok &= check_duckdb(con, f"iceberg_scan('{metadata}')", columns, rows, filters)
    return ok


def check_duckdb(con, source, columns, rows, filters):
    selected = ", ".join(f'"{c}"' for c in columns)
    ok = compare("duckdb", columns, con.execute(f"SELECT {selected} FROM {source}").fetchall(), rows)
    for f in filters:
        (count,) = con.execute(f'SELECT count(*) FROM {source} WHERE "{f["column"]}" = ?', [f["value"]]).fetchone()
        ok &= check_count("duckdb", f"{f['column']} = {f['value']}", count, f["count"])
    return ok


def s3_secret(con, endpoint):
    """Points DuckDB's httpfs at the S3-compatible server at `endpoint`."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID", "test"), os.environ.get("AWS_SECRET_ACCESS_KEY", "test")
    host = endpoint.split("://", 1)[1]
    con.execute(
        f"CREATE SECRET s3 (TYPE s3, KEY_ID '{key}', SECRET '{secret}', REGION 'us-east-1', "
        f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL {str(endpoint.startswith('https')).lower()})"
    )


def check_delta(table_dir, columns, rows, filters, endpoint=None):
    from deltalake import DeltaTable

    ok = True
    options = None
    if endpoint:
        options = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
    delta_table = DeltaTable(table_dir, storage_options=options)
    arrow = delta_table.to_pyarrow_table(columns=columns)
    ok &= compare("delta-rs", columns, [[r[c] for c in columns] for r in arrow.to_pylist()], rows)
    latest = delta_table.history(1)[0]
    if "sluice.run-id" not in latest:
        print(f"delta-rs: the latest commit has no sluice.run-id: {latest}")
        ok = False
    # delta-rs's dataset gives each file its partition values from the log, and prunes with them.
    import pyarrow.dataset as ds

    dataset = delta_table.to_pyarrow_dataset()
    for f in filters:
        count = dataset.to_table(filter=ds.field(f["column"]) == f["value"]).num_rows
        ok &= check_count("delta-rs", f"{f['column']} = {f['value']}", count, f["count"])

    if endpoint:
        con = duckdb_with("delta", "httpfs")
        s3_secret(con, endpoint)
    else:
        con = duckdb_with("delta")
    ok &= check_duckdb(con, f"delta_scan('{table_dir}')", columns, rows, filters)
    return ok


def main():
    mode, *args = sys.argv[1:]
    with open(args[-1]) as f:
        expected = json.load(f)
    columns, rows = expected["columns"], sorted(expected["rows"], key=sort_key)
    filters = expected.get("filters", [])
    if mode == "iceberg":
        home, namespace, table = args[:3]
        db, warehouse = os.path.join(home, "catalog.db"), f"file://{home}/warehouse"
        ok = check_iceberg(db, "lake", warehouse, namespace, table, columns, rows, filters)
    elif mode == "iceberg-s3":
        endpoint, db, name, warehouse, namespace, table = args[:6]
        ok = check_iceberg(db, name, warehouse, namespace, table, columns, rows, filters, endpoint)
    elif mode == "delta":
        ok = check_delta(args[0], columns, rows, filters)
    elif mode == "delta-s3":
        ok = check_delta(args[1], columns, rows, filters, args[0])
    else:
        sys.exit(f"unknown mode {mode!r}: expected iceberg, iceberg-s3, delta or delta-s3")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
