"""Opening the wallet file and its tables: the core ones (meta, schema_modules) and each module's registered DDL,
applied in order at start (append-only: a module's later statements are its migrations)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from ..runtime.hardening import make_private_dir, private_sqlite_file
from .backup import before_migration
from .writer import connect

SCHEMA_VERSION = 1

CORE_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS schema_modules (name TEXT PRIMARY KEY, applied INTEGER NOT NULL)",
]


def pending_migrations(conn: sqlite3.Connection, schemas: Mapping[str, list[str]]) -> dict[str, tuple[int, int]]:
    """{module: (statements applied, statements known)} for every module this file is behind on."""
    try:
        applied = dict(conn.execute("SELECT name, applied FROM schema_modules"))
    except sqlite3.OperationalError:  # no schema yet: a file this code never opened
        return {}
    return {name: (applied.get(name, 0), len(st)) for name, st in schemas.items()
            if applied.get(name, 0) < len(st)}


def apply_schemas(conn: sqlite3.Connection, schemas: Mapping[str, list[str]]) -> dict[str, bytes]:
    """WAL, synchronous=FULL, the core tables and every module's statements not applied yet, in one
    transaction -> the meta table."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("BEGIN IMMEDIATE")
    for statement in CORE_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION).encode(),))
    for name, statements in schemas.items():
        row = conn.execute("SELECT applied FROM schema_modules WHERE name = ?", (name,)).fetchone()
        applied = row[0] if row else 0
        for statement in statements[applied:]:
            conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO schema_modules VALUES (?, ?)", (name, len(statements)))
    conn.execute("COMMIT")
    return {k: bytes(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def open_file(path: Path, schemas: Mapping[str, list[str]]) -> tuple[sqlite3.Connection, dict[str, bytes], Path | None]:
    """Open (creating if needed, 0700 dir, 0600 file) the wallet file and apply the schemas; an existing file a
    migration is about to change is copied first -> (the writer's connection, the meta table, that copy)."""
    make_private_dir(path.parent)
    existed = path.exists() and path.stat().st_size > 0
    private_sqlite_file(path)
    conn = connect(path)
    copy = before_migration(path, conn, pending_migrations(conn, schemas)) if existed else None
    try:
        meta = apply_schemas(conn, schemas)
    except BaseException:
        conn.close()
        raise
    return conn, meta, copy
