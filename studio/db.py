"""The studio's SQLite database (job history, catalog registrations, later results).

One file under the studio home. Each module owns its tables and creates them with
`CREATE TABLE IF NOT EXISTS` through `ensure_schema`, so there is no central migration list.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path


def connect(db_path: Path) -> sqlite3.Connection:
    """Open the database; WAL so the app, the CLI and job watchers can use it at once."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def ensure_schema(conn: sqlite3.Connection, ddl: str) -> None:
    """Run a module's CREATE TABLE IF NOT EXISTS statements."""
    conn.executescript(ddl)


def add_missing_columns(conn: sqlite3.Connection, table: str, columns: Mapping[str, str]) -> None:
    """Add each column (name -> SQL type) that `table` lacks: a home made by an earlier version
    of the studio gets the columns later versions write, and its rows keep NULL there."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, sql_type in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
