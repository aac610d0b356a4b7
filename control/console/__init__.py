"""The web console: a read-only view of one platform in a browser (`inferstream console`).

Pages follow the control, status and workers topics in memory (feeds.py) and read ClickHouse
for logs; on a secured platform every page needs a session (auth.py). See docs/console.md.
"""
