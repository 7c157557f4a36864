"""``tachyond inspect PATH``: a stopped wallet file's tables, row counts and schema versions, read-only,
without the password (nothing is decrypted: only SQLite's own structure and the clear bookkeeping rows).

sqlite-utils reads the structure (tables, columns, counts); the file is opened ``mode=ro``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils


def known_schemas() -> dict[str, int]:
    """How many schema statements this tachyond knows per core module (what a file is migrated to)."""
    from ..dex.store import DEX_SCHEMA
    from ..ledger.journal import LEDGER_SCHEMA
    from ..onramp.store import SCHEMA as ONRAMP_SCHEMA

    return {"ledger": len(LEDGER_SCHEMA), "dex": len(DEX_SCHEMA), "onramp": len(ONRAMP_SCHEMA)}


def inspect(path: Path) -> dict[str, Any]:
    """{path, bytes, schema_version, wallet_id, modules: {name: {applied, this_release}}, tables: [...]}."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    # A read-only open of a WAL database still creates -wal and -shm beside it when they are absent; run as
    # root on a stopped daemon's file, they would be root's, and the daemon (its own user) could not open its
    # wallet again. A cleanly stopped wallet has no -wal: everything is in the file, so it is opened
    # immutable (nothing created). With a -wal beside it (a running or killed daemon: the files exist and
    # are the daemon's), mode=ro reads through it.
    wal = path.with_name(path.name + "-wal")
    flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    conn = sqlite3.connect(f"file:{quote(str(path))}?{flags}", uri=True)
    try:
        db = sqlite_utils.Database(conn)
        names = set(db.table_names())
        if "meta" not in names or "schema_modules" not in names:
            raise ValueError(f"{path} is not a tachyond wallet file (no meta or schema_modules table)")
        meta = {row["key"]: row["value"] for row in db["meta"].rows_where("key IN ('schema_version', 'wallet_id')")}
        applied = {row["name"]: row["applied"] for row in db["schema_modules"].rows}
        known = known_schemas()
        modules = {name: {"applied": applied.get(name, 0), "this_release": known.get(name)}
                   for name in sorted(set(applied) | set(known))}
        tables = [{"name": t.name, "rows": t.count, "columns": [c.name for c in t.columns]} for t in db.tables]
        text = lambda v: bytes(v).decode() if isinstance(v, (bytes, memoryview)) else v  # noqa: E731
        return {"path": str(path), "bytes": path.stat().st_size,
                "schema_version": int(text(meta["schema_version"])) if "schema_version" in meta else None,
                "wallet_id": text(meta.get("wallet_id")), "modules": modules, "tables": tables}
    finally:
        conn.close()


def render(doc: dict[str, Any]) -> str:
    lines = [f"{doc['path']}  ({doc['bytes']} bytes)", f"schema_version  {doc['schema_version']}",
             f"wallet_id       {doc['wallet_id'] or '-'}", "", "MODULE   APPLIED  THIS RELEASE"]
    for name, m in doc["modules"].items():
        behind = m["this_release"] is not None and m["applied"] < m["this_release"]
        lines.append(f"{name:<8} {m['applied']:>7}  {m['this_release'] if m['this_release'] is not None else '-':>12}"
                     + ("  (migrated at the next start, after a backup)" if behind else ""))
    lines += ["", "TABLE                     ROWS"]
    lines += [f"{t['name']:<24} {t['rows']:>5}" for t in doc["tables"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tachyond inspect",
                                 description="Tables, row counts and schema versions of a stopped wallet file "
                                             "(read-only; nothing is decrypted, no password needed).")
    ap.add_argument("path", type=Path, help="a wallet file, e.g. /var/lib/tachyond/wallet.db")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    try:
        doc = inspect(args.path)
    except (OSError, ValueError, sqlite3.DatabaseError) as exc:
        print(f"tachyond inspect: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0
