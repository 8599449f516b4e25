-- Sluice quickstart: a schema, two tables, a pipeline, one run, and what it wrote.
-- Run it with:  cargo run -- -f sql/examples/quickstart.sql
-- Everything lands in .sluice/ (an Iceberg SQL catalog on SQLite, a warehouse folder and the
-- run ledger). The script starts from a clean slate, so it can be run again.

DROP PIPELINE IF EXISTS customer_totals;
DROP TABLE IF EXISTS lake.shop.customer_totals;
DROP TABLE IF EXISTS lake.shop.orders;
CREATE SCHEMA IF NOT EXISTS lake.shop;

-- Source table: 10,000 orders from 5 customers, loaded by an ad-hoc INSERT (itself one atomic run).
CREATE TABLE lake.shop.orders (
    order_id   BIGINT NOT NULL,
    customer   VARCHAR NOT NULL,
    amount     DOUBLE,
    ordered_at TIMESTAMP
);
INSERT INTO lake.shop.orders
SELECT value,
       'customer-' || (value % 5),
       round((value % 97) * 1.25, 2),
       to_timestamp_seconds(1767225600 + value * 60)
FROM generate_series(1, 10000);

-- Target table and the pipeline that fills it, written by 4 shards and committed as one snapshot.
CREATE TABLE lake.shop.customer_totals (
    customer VARCHAR NOT NULL,
    orders   BIGINT NOT NULL,
    revenue  DOUBLE
);
CREATE PIPELINE customer_totals WITH (shards = 4) AS
INSERT INTO lake.shop.customer_totals
SELECT customer, count(*), sum(amount) FROM lake.shop.orders GROUP BY customer;

-- The run report: run id, rows, files, snapshot id, elapsed time.
RUN PIPELINE customer_totals;

SELECT * FROM lake.shop.customer_totals ORDER BY customer;
