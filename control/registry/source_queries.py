"""What a ClickHouse connection may name: one plain SELECT, and never the platform's own tables.

A connection's query is the one place where a person's SQL text reaches ClickHouse, so it is
parsed (sqlglot, ClickHouse dialect) and allowed only as a single SELECT (or WITH ... SELECT,
or a UNION of them) over tables: no table functions (file, url, s3, remote, executable, ...,
even numbers), no INTO OUTFILE, no SETTINGS, no FORMAT, no second statement. Parameters are
`{name:Type}`, bound by the engine. On the platform's own storage (a connection without a
`url`) neither a query nor a table may name the platform's tables or the system databases:
they hold every workspace's logs and runs, which are read through `inferstream logs`.
chDB runs every query with readonly=1 as a second wall.
"""

from __future__ import annotations

from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from schemas.errors import InferstreamError

# The platform's tables and views (sinks/tables.py, sinks/runs.py; a test keeps them in step).
PLATFORM_TABLES = frozenset({
    "schema_version", "inference_logs", "inference_log_rows", "inference_log_blocks",
    "assay_results", "task_runs", "task_run_logs", "labels", "labelled_logs",
})
SYSTEM_DATABASES = frozenset({"system", "information_schema"})
# ClickHouse's table functions that reach beyond the database, refused wherever they appear
# (`x IN file(...)` too), lower case.
TABLE_FUNCTIONS = frozenset({
    "file", "filecluster", "url", "urlcluster", "s3", "s3cluster", "gcs", "oss", "cosn",
    "azureblobstorage", "azureblobstoragecluster", "hdfs", "hdfscluster", "remote",
    "remotesecure", "cluster", "clusterallreplicas", "executable", "input", "jdbc", "odbc",
    "mysql", "postgresql", "mongodb", "redis", "sqlite", "hive", "deltalake", "hudi", "iceberg",
    "icebergs3", "icebergazure", "iceberghdfs", "icebergcluster", "dictionary", "merge",
    "view", "viewifpermitted", "loop", "arrowflight", "ytsaurus", "prometheusquery",
    "timeseriesdata", "mergetreeindex", "mergetreeprojection", "fuzzjson", "fuzzquery",
})


class QueryRefused(InferstreamError):
    """A connection's query or table that the platform will not run."""


def check_table(table: str, on_platform_storage: bool) -> None:
    """Refuse a table of the platform (or a system database) on the platform's storage."""
    database, _, name = table.rpartition(".")
    if on_platform_storage and (database.lower() in SYSTEM_DATABASES
                                or name.lower() in PLATFORM_TABLES):
        raise QueryRefused(f"table {table!r} belongs to the platform; a connection on the "
                           "platform's storage reads and writes tables of its own")


@lru_cache(maxsize=256)
def check_query(sql: str, on_platform_storage: bool) -> None:
    """Raise QueryRefused unless `sql` is one plain SELECT over tables (see the module)."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="clickhouse") if s is not None]
    except ParseError as exc:
        first = str(exc).splitlines()[0][:200]
        raise QueryRefused(f"query is not one plain SELECT that inferstream can check "
                           f"(INTO OUTFILE and other clauses are refused): {first}") from None
    if len(statements) != 1:
        raise QueryRefused(f"query has {len(statements)} statements; give exactly one SELECT")
    query = statements[0]
    if not isinstance(query, exp.Query):
        raise QueryRefused(f"query must be a SELECT, not {query.key.upper()}")
    for node in query.walk():
        if isinstance(node, exp.Query):
            for clause in ("settings", "format", "into"):
                if node.args.get(clause):
                    raise QueryRefused(f"query has a {clause.upper()} clause; leave it out")
        if isinstance(node, exp.Anonymous) and node.name.lower() in TABLE_FUNCTIONS:
            raise QueryRefused(f"query calls the table function {node.name!r}; only tables "
                               "may be read")
        if isinstance(node, exp.Into):
            raise QueryRefused("query has an INTO clause; a source only reads")
        if isinstance(node, exp.Table):
            if not isinstance(node.this, exp.Identifier):
                raise QueryRefused(f"query reads the table function "
                                   f"{node.this.sql('clickhouse')[:80]!r}; only tables may be "
                                   "read")
            named = ".".join(p.name for p in node.parts)
            check_table(named, on_platform_storage)
