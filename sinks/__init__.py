"""ClickHouse: one storage over chDB or a server, the tables, the log sink, the typed reads,
assays and task runs."""
