"""ClickHouse: one storage over chDB or a server, the project's tables, and assays."""
