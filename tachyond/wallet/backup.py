"""Copies of the (still encrypted) wallet file: wallet.backup while running, and the copy taken before a schema
migration changes an existing file. Each destination is created once (O_EXCL|O_NOFOLLOW, 0600), written only
through that descriptor, and fsynced."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from ..errors import Conflict, InvalidParams
from ..runtime.hardening import private_sqlite_file
from .writer import connect


def online_backup(path: Path, dest: Path) -> dict:
    """wallet.backup: copy the wallet file at ``path`` into a new file ``dest`` -> {path, bytes}."""
    # The destination is created here (O_EXCL: never an existing file; O_NOFOLLOW: never through a link)
    # and written only through this descriptor: reopening it by path would let whoever controls its
    # directory swap in a symlink between the two opens and have the daemon write where it points.
    try:
        fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise Conflict(f"backup destination {dest} already exists") from None
    except OSError as exc:
        raise InvalidParams(f"cannot create backup file {dest}: {exc.strerror}") from None
    return {"path": str(dest), "bytes": fill_backup(fd, dest, path)}


def before_migration(path: Path, conn: sqlite3.Connection, pending: Mapping[str, tuple[int, int]]) -> Path | None:
    """Before a migration changes an existing wallet file, copy it (still encrypted) beside it:
    ``wallet.db.pre-migration-<UTC time>.bak``, 0600, one self-contained file. ``pending``: the modules'
    migrations due ({module: (applied, known)}). None when none is due."""
    try:
        has_modules = conn.execute("SELECT count(*) FROM schema_modules WHERE applied > 0").fetchone()[0] > 0
    except sqlite3.OperationalError:
        has_modules = False
    if not pending or not has_modules:  # nothing a module wrote yet (a bare wallet): nothing to migrate
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # Like wallet.backup: the name is claimed by O_EXCL|O_NOFOLLOW (a name taken by anything, a dangling
    # symlink included, is skipped, never followed or overwritten) and the copy is written only through
    # that descriptor, then synced before the migration may change the original.
    for n in range(1, 1000):
        dest = path.with_name(f"{path.name}.pre-migration-{stamp}{'' if n == 1 else f'-{n}'}.bak")
        try:
            fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(errno.EEXIST, "no free name for the pre-migration backup", str(dest))
    fill_backup(fd, dest, path)
    what = ", ".join(f"{name} {have}->{want}" for name, (have, want) in sorted(pending.items()))
    logging.getLogger("tachyond.wallet").warning("wallet schema migration (%s): the file as it was is "
                                                 "copied to %s", what, dest)
    return dest


def fill_backup(fd: int, dest: Path, path: Path) -> int:
    """Copy the wallet file at ``path`` into ``fd`` (the descriptor its creator opened: never reopened by path),
    mode 0600, fsynced; closes ``fd``, and on any failure removes ``dest``. Returns the bytes written."""
    try:
        os.fchmod(fd, 0o600)
        written = _backup_into(fd, path)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(dest)
        except OSError:
            pass
        raise
    os.close(fd)
    return written


def _backup_into(fd: int, path: Path) -> int:
    """SQLite's online backup into a private scratch file beside the wallet, then copied into fd; -> bytes."""
    scratch = path.parent / f".backup-{secrets.token_hex(8)}.db"
    private_sqlite_file(scratch)
    try:
        src = connect(path)
        dst = sqlite3.connect(scratch, isolation_level=None)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            dst.close()
            src.close()
        written = 0
        with open(scratch, "rb") as fh:
            while chunk := fh.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    written += n
        return written
    finally:
        for suffix in ("", "-journal"):
            try:
                os.unlink(f"{scratch}{suffix}")
            except FileNotFoundError:
                pass
