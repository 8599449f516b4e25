#!/usr/bin/env python3
"""Sluice beside its peers on the same TPC-H jobs, in one run: wall time and peak RSS.

Every contestant runs as its own process (wall time from start to exit, peak RSS from
wait4), on the same lineitem Parquet file, `--repeat` times; the median is reported, with the
ratio of Sluice's time to each peer's (below 1.0: Sluice is faster).

  job `filter`  the projection and filter of the end-to-end bench (≈4.34 M rows at SF1)
  job `orders`  a GROUP BY over every line (1.5 M rows), into a table partitioned by month

Contestants (codec in brackets):
  sluice-floor     the sluice binary running DataFusion's COPY TO Parquet files   [zstd(1)]
  sluice-iceberg   sluice RUN PIPELINE into the embedded Iceberg catalog          [zstd(1)]
  sluice-ice-snappy  the same, the table's write.parquet.compression-codec = snappy  [snappy]
  sluice-delta     sluice RUN PIPELINE into a Delta table                         [zstd(1)]
  duckdb-parquet   DuckDB COPY ... TO Parquet                                     [zstd(1)]
  duckdb-iceberg   DuckDB INSERT into an Iceberg table through its iceberg
                   extension (a REST catalog: tests/interop/rest_catalog.py)      [snappy, DuckDB's only choice;
                                                                   compared with sluice-ice-snappy]
  pyiceberg        DuckDB computes the rows, pyiceberg appends them (SqlCatalog on SQLite)  [zstd(1)]
  polars-delta     polars computes the rows, write_delta (delta-rs)               [zstd(1)]

Then the memory section: a sort of all of lineitem into an Iceberg table with and without
`--memory-limit`, reporting the peak RSS of each (DataFusion spills the sort beyond the limit).

usage: benches/run.sh (installs benches/.venv), or
       benches/.venv/bin/python benches/peers/run.py [--sf 1] [--repeat 3] [--sluice PATH]
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FILTER = (
    "SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity, "
    "l_extendedprice * (1 - l_discount) AS net_price, l_shipdate, l_returnflag "
    "FROM lineitem WHERE l_shipdate >= DATE '1994-01-01'"
)
ORDERS = (
    "SELECT l_orderkey, max(l_shipdate) AS l_shipdate, "
    "CAST(date_trunc('month', max(l_shipdate)) AS DATE) AS ship_month, count(*) AS lines, "
    "sum(l_quantity) AS quantity, sum(l_extendedprice * (1 - l_discount)) AS revenue "
    "FROM lineitem GROUP BY l_orderkey"
)
JOBS = {"filter": FILTER, "orders": ORDERS}


# --- measuring ---------------------------------------------------------------------------------


def measure(cmd, cwd=None):
    """Runs cmd to its end; returns (wall seconds, peak RSS in MiB). Fails loudly."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{process.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def medians_round_robin(repeat, contestants):
    """Each round runs every contestant once, so that the machine's drift (these machines are
    noisy) falls on all of them alike; returns each one's median wall time and peak RSS."""
    samples = {name: [] for name in contestants}
    for i in range(repeat):
        for name, cmd_for in contestants.items():
            samples[name].append(measure(cmd_for(i)))
    return {
        name: (statistics.median(w for w, _ in runs), statistics.median(r for _, r in runs)) for name, runs in samples.items()
    }


def worker(name, *args):
    """A command that runs one of this file's workers in a fresh Python process."""
    return [sys.executable, os.path.abspath(__file__), "--worker", name, json.dumps(args)]


# --- the workers (each runs in its own process) ------------------------------------------------


def duckdb_connection(extensions=()):
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
    for name in extensions:
        module = __import__(f"duckdb_extension_{name}")
        folder = os.path.dirname(module.__file__)
        con.execute(f"LOAD '{glob.glob(os.path.join(folder, 'extensions', '*', f'{name}.duckdb_extension'))[0]}'")
    return con


def with_lineitem(con, lineitem):
    con.execute(f"CREATE VIEW lineitem AS SELECT * FROM read_parquet('{lineitem}')")
    return con


def work_duckdb_parquet(lineitem, job, out):
    partition = ", PARTITION_BY (ship_month)" if job == "orders" else ""
    con = with_lineitem(duckdb_connection(), lineitem)
    con.execute(f"COPY ({JOBS[job]}) TO '{out}' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1{partition})")


def attach_rest(con, port):
    con.execute(f"ATTACH 'warehouse' AS ice (TYPE iceberg, ENDPOINT 'http://127.0.0.1:{port}', AUTHORIZATION_TYPE 'none')")


def work_duckdb_iceberg_setup(lineitem, job, port):
    con = with_lineitem(duckdb_connection(["avro", "httpfs", "iceberg"]), lineitem)
    attach_rest(con, port)
    con.execute("CREATE SCHEMA IF NOT EXISTS ice.bench")
    con.execute(f"CREATE TABLE ice.bench.{job} AS {JOBS[job]} LIMIT 0")


def work_duckdb_iceberg(lineitem, job, port):
    con = with_lineitem(duckdb_connection(["avro", "httpfs", "iceberg"]), lineitem)
    attach_rest(con, port)
    con.execute(f"INSERT INTO ice.bench.{job} {JOBS[job]}")


def pyiceberg_catalog(folder):
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("bench", uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}/warehouse")


def work_pyiceberg_setup(lineitem, job, folder):
    from pyiceberg.transforms import MonthTransform

    schema = with_lineitem(duckdb_connection(), lineitem).execute(f"{JOBS[job]} LIMIT 0").arrow().schema
    catalog = pyiceberg_catalog(folder)
    catalog.create_namespace_if_not_exists("bench")
    properties = {"write.parquet.compression-codec": "zstd", "write.parquet.compression-level": "1"}
    table = catalog.create_table(f"bench.{job}", schema=schema, properties=properties)
    if job == "orders":
        with table.update_spec() as update:
            update.add_field("l_shipdate", MonthTransform(), "l_shipdate_month")


def work_pyiceberg(lineitem, job, folder):
    rows = with_lineitem(duckdb_connection(), lineitem).execute(JOBS[job]).arrow()
    rows = rows.read_all() if hasattr(rows, "read_all") else rows  # pyiceberg partitions tables only
    pyiceberg_catalog(folder).load_table(f"bench.{job}").append(rows)


def work_set_codec(home, table, codec):
    """Sets an Iceberg table's Parquet codec in Sluice's catalog (pyiceberg reads it as is)."""
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("lake", uri=f"sqlite:///{home}/catalog.db", warehouse=f"file://{home}/warehouse")
    with catalog.load_table(table).transaction() as tx:
        tx.set_properties({"write.parquet.compression-codec": codec})


def work_polars_delta(lineitem, job, path):
    import datetime

    import polars as pl
    from deltalake import WriterProperties

    items = pl.scan_parquet(lineitem)
    net = pl.col("l_extendedprice") * (1 - pl.col("l_discount"))
    if job == "filter":
        columns = ["l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity"]
        frame = items.filter(pl.col("l_shipdate") >= datetime.date(1994, 1, 1)).select(
            *columns, net.alias("net_price"), "l_shipdate", "l_returnflag"
        )
        partition_by = None
    else:
        frame = (
            items.group_by("l_orderkey")
            .agg(
                pl.col("l_shipdate").max(),
                pl.col("l_shipdate").max().dt.truncate("1mo").alias("ship_month"),
                pl.len().alias("lines"),
                pl.col("l_quantity").sum().alias("quantity"),
                net.sum().alias("revenue"),
            )
        )
        partition_by = ["ship_month"]
    options = {"writer_properties": WriterProperties(compression="ZSTD", compression_level=1)}
    if partition_by:
        options["partition_by"] = partition_by
    frame.collect().write_delta(path, mode="append", delta_write_options=options)


WORKERS = {name[len("work_") :]: f for name, f in globals().items() if name.startswith("work_")}


# --- the run -------------------------------------------------------------------------------------


def sluice_cmd(sluice, home, catalogs, sql, extra=()):
    return [sluice, "--home", home, "--catalogs", catalogs, *extra, "-c", sql]


def start_rest_catalog(folder):
    server = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests/interop/rest_catalog.py"), f"{folder}/catalog.db", f"{folder}/warehouse"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    return server, int(server.stdout.readline())


def report(rows, sluice_for):
    print(f"  {'contestant':<17} {'wall (median)':>14} {'peak RSS':>10}   Sluice's time / theirs")
    for name, (wall, rss) in rows.items():
        mine = sluice_for.get(name)
        ratio = f"{rows[mine][0] / wall:5.2f}  ({mine})" if mine and mine in rows else ""
        print(f"  {name:<17} {wall:>12.3f} s {rss:>7.0f} MiB   {ratio}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sf", default="1")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sluice", default=None, help="the sluice binary (default: the release build)")
    parser.add_argument("--memory-limit", default=str(256 << 20), help="bytes, for the memory section")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        return WORKERS[options.worker](*json.loads(options.args))

    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    sluice = options.sluice or os.path.join(target, "release", "sluice")
    lineitem = os.path.join(target, "tpch", f"sf{options.sf}", "lineitem.parquet")
    if not os.path.exists(lineitem):
        generator = os.path.join(os.path.dirname(sys.executable), "tpchgen-cli")
        subprocess.run([generator, "parquet", "-s", options.sf, "--tables", "lineitem", "--output-dir", os.path.dirname(lineitem)], check=True)
    cores = os.cpu_count()
    print(f"TPC-H SF{options.sf}, median of {options.repeat}, {cores} cores; sluice: {sluice}")
    work = tempfile.mkdtemp(prefix="sluice-peers-")
    try:
        home, catalogs = f"{work}/sluice", f"{work}/catalogs"
        os.makedirs(catalogs)
        with open(f"{catalogs}/delta.toml", "w") as f:
            f.write(f'type = "delta"\nroot = "{work}/delta"\n')
        codec = "SET datafusion.execution.parquet.compression = 'zstd(1)';"
        setup = [f"CREATE EXTERNAL TABLE lineitem STORED AS PARQUET LOCATION '{lineitem}';", "CREATE SCHEMA lake.bench; CREATE SCHEMA delta.bench;"]
        for job, query in JOBS.items():
            iceberg_partition = " PARTITIONED BY (month(l_shipdate))" if job == "orders" else ""
            delta_partition = " PARTITIONED BY (ship_month)" if job == "orders" else ""
            setup += [
                f"CREATE TABLE lake.bench.{job}{iceberg_partition} AS {query} LIMIT 0;",
                f"CREATE TABLE delta.bench.{job}{delta_partition} AS {query} LIMIT 0;",
                f"CREATE PIPELINE {job}_iceberg AS INSERT INTO lake.bench.{job} {query};",
                f"CREATE TABLE lake.bench.{job}_snappy{iceberg_partition} AS {query} LIMIT 0;",
                f"CREATE PIPELINE {job}_iceberg_snappy AS INSERT INTO lake.bench.{job}_snappy {query};",
                f"CREATE PIPELINE {job}_delta AS INSERT INTO delta.bench.{job} {query};",
            ]
        measure(sluice_cmd(sluice, home, catalogs, " ".join(setup)))
        for job in JOBS:
            measure(worker("set_codec", home, f"bench.{job}_snappy", "snappy"))
        rest_folder = f"{work}/rest"
        os.makedirs(rest_folder)
        server, port = start_rest_catalog(rest_folder)
        try:
            for job, query in JOBS.items():
                print(f"\njob `{job}`")
                floor_partition = " PARTITIONED BY (ship_month)" if job == "orders" else ""
                if job == "filter":  # DuckDB's iceberg extension does not create partitioned tables
                    measure(worker("duckdb_iceberg_setup", lineitem, job, port))
                pyiceberg_folder = f"{work}/pyiceberg"
                os.makedirs(pyiceberg_folder, exist_ok=True)
                measure(worker("pyiceberg_setup", lineitem, job, pyiceberg_folder))
                contestants = {
                    "sluice-floor": lambda i: sluice_cmd(
                        sluice, home, catalogs, f"{codec} COPY ({query}) TO '{work}/floor-{job}/{i}/' STORED AS PARQUET{floor_partition}"
                    ),
                    "sluice-iceberg": lambda i: sluice_cmd(sluice, home, catalogs, f"RUN PIPELINE {job}_iceberg"),
                    "sluice-ice-snappy": lambda i: sluice_cmd(sluice, home, catalogs, f"RUN PIPELINE {job}_iceberg_snappy"),
                    "sluice-delta": lambda i: sluice_cmd(sluice, home, catalogs, f"RUN PIPELINE {job}_delta"),
                    "duckdb-parquet": lambda i: worker("duckdb_parquet", lineitem, job, f"{work}/duckdb-{job}-{i}" + ("" if job == "orders" else ".parquet")),
                    "duckdb-iceberg": lambda i: worker("duckdb_iceberg", lineitem, job, port),
                    "pyiceberg": lambda i: worker("pyiceberg", lineitem, job, pyiceberg_folder),
                    "polars-delta": lambda i: worker("polars_delta", lineitem, job, f"{work}/polars-{job}"),
                }
                if job != "filter":
                    del contestants["duckdb-iceberg"]
                rows = medians_round_robin(options.repeat, contestants)
                report(
                    rows,
                    {
                        "sluice-floor": None,
                        "duckdb-parquet": "sluice-floor",
                        "duckdb-iceberg": "sluice-ice-snappy",
                        "pyiceberg": "sluice-iceberg",
                        "polars-delta": "sluice-delta",
                    },
                )
        finally:
            server.kill()

        # One shard: DataFusion 53 spills a single sort reliably; a sort split over partitions
        # under a tight limit can fail in its unspillable merge phase (apache/datafusion#16979).
        print("\nmemory: ORDER BY l_comment over all of lineitem into an Iceberg table, 1 shard (peak RSS)")
        sort = "SELECT * FROM lineitem ORDER BY l_comment"
        measure(sluice_cmd(sluice, home, catalogs, f"CREATE TABLE lake.bench.sorted AS {sort} LIMIT 0"))
        limit = int(options.memory_limit)
        for label, extra in [("no limit", ["--shards", "1"]), (f"--memory-limit {limit >> 20} MiB", ["--shards", "1", "--memory-limit", str(limit)])]:
            wall, rss = measure(sluice_cmd(sluice, home, catalogs, f"INSERT INTO lake.bench.sorted {sort}", extra))
            print(f"  {label:<28} {wall:>8.3f} s {rss:>7.0f} MiB peak RSS")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
