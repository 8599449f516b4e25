"""An Iceberg REST catalog for the tests: the REST protocol over pyiceberg's SqlCatalog, as
Iceberg's own REST test fixture puts the protocol over the JDBC catalog. Creating tables and
committing (requirements checked, updates applied, metadata written, pointer swapped) is done by
pyiceberg; this file only translates HTTP.

usage: rest_catalog.py CATALOG_DB WAREHOUSE_DIR
Prints the port it listens on (127.0.0.1), then serves until killed. When SLUICE_REST_TOKEN is
set, every request must carry `Authorization: Bearer <that token>`.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import CommitTableRequest
from pyiceberg.table.sorting import SortOrder

ERRORS = {
    NoSuchTableError: (404, "NoSuchTableException"),
    NoSuchNamespaceError: (404, "NoSuchNamespaceException"),
    NamespaceAlreadyExistsError: (409, "AlreadyExistsException"),
    TableAlreadyExistsError: (409, "AlreadyExistsException"),
    NamespaceNotEmptyError: (409, "NamespaceNotEmptyException"),
    CommitFailedException: (409, "CommitFailedException"),
}


def table_result(table):
    return {"metadata-location": table.metadata_location, "metadata": json.loads(table.metadata.model_dump_json()), "config": {}}


class Named:
    """What SqlCatalog.commit_table needs of a table: its name (the table may not exist yet)."""

    def __init__(self, identifier):
        self.identifier = identifier

    def name(self):
        return self.identifier


class Handler(BaseHTTPRequestHandler):
    catalog: SqlCatalog = None
    token = os.environ.get("SLUICE_REST_TOKEN")

    def log_message(self, *args):
        pass

    def reply(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def route(self, method):
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            return self.reply(401, {"error": {"message": "not authorized", "type": "NotAuthorizedException", "code": 401}})
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")][1:]  # drop "v1"
        query = parse_qs(url.query)
        try:
            self.dispatch(method, parts, query)
        except tuple(ERRORS) as e:
            status, kind = next(v for k, v in ERRORS.items() if isinstance(e, k))
            self.reply(status, {"error": {"message": str(e), "type": kind, "code": status}})

    def dispatch(self, method, parts, query):
        c = self.catalog
        match method, parts:
            case "GET", ["config"]:
                return self.reply(200, {"defaults": {}, "overrides": {}})
            case "GET", ["namespaces"]:
                return self.reply(200, {"namespaces": [list(ns) for ns in c.list_namespaces()]})
            case "POST", ["namespaces"]:
                body = self.body()
                c.create_namespace(tuple(body["namespace"]), body.get("properties", {}))
                return self.reply(200, {"namespace": body["namespace"], "properties": body.get("properties", {})})
            case "GET", ["namespaces", ns]:
                return self.reply(200, {"namespace": [ns], "properties": c.load_namespace_properties(ns)})
            case "HEAD", ["namespaces", ns]:
                return self.reply(204 if (ns,) in c.list_namespaces() else 404)
            case "DELETE", ["namespaces", ns]:
                c.drop_namespace(ns)
                return self.reply(204)
            case "GET", ["namespaces", ns, "tables"]:
                return self.reply(200, {"identifiers": [{"namespace": [ns], "name": t[-1]} for t in c.list_tables(ns)]})
            case "POST", ["namespaces", ns, "tables"]:
                body = self.body()
                # A staged create (DuckDB's CREATE TABLE) only describes the table; the commit
                # that follows, with an assert-create requirement, creates it.
                create = c._create_staged_table if body.get("stage-create") else c.create_table
                table = create(
                    (ns, body["name"]),
                    schema=Schema.model_validate(body["schema"]),
                    location=body.get("location"),
                    partition_spec=PartitionSpec.model_validate(body["partition-spec"]) if body.get("partition-spec") else PartitionSpec(),
                    sort_order=SortOrder.model_validate(body["write-order"]) if body.get("write-order") else SortOrder(),
                    properties=body.get("properties") or {},
                )
                return self.reply(200, table_result(table))
            case "GET", ["namespaces", ns, "tables", name]:
                return self.reply(200, table_result(c.load_table((ns, name))))
            case "HEAD", ["namespaces", ns, "tables", name]:
                return self.reply(204 if c.table_exists((ns, name)) else 404)
            case "DELETE", ["namespaces", ns, "tables", name]:
                if query.get("purgeRequested") == ["true"]:
                    c.purge_table((ns, name))
                else:
                    c.drop_table((ns, name))
                return self.reply(204)
            case "POST", ["namespaces", ns, "tables", name]:
                request = CommitTableRequest.model_validate(self.body())
                response = c.commit_table(Named((ns, name)), tuple(request.requirements), tuple(request.updates))
                return self.reply(200, {"metadata-location": response.metadata_location, "metadata": json.loads(response.metadata.model_dump_json())})
            case "POST", ["transactions", "commit"]:
                # DuckDB commits through the multi-table endpoint; each change is one table's
                # commit (atomic per table, which is all one-table writers need).
                for change in self.body()["table-changes"]:
                    request = CommitTableRequest.model_validate(change)
                    ident = change["identifier"]
                    c.commit_table(Named((*ident["namespace"], ident["name"])), tuple(request.requirements), tuple(request.updates))
                return self.reply(204)
        self.reply(404, {"error": {"message": f"no route {method} {self.path}", "type": "NotFound", "code": 404}})

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_HEAD(self):
        self.route("HEAD")

    def do_DELETE(self):
        self.route("DELETE")


def main():
    db, warehouse = sys.argv[1:3]
    Handler.catalog = SqlCatalog("rest", uri=f"sqlite:///{db}", warehouse=f"file://{warehouse}")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
