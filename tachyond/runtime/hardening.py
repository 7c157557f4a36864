"""Process hardening at start: no core dumps (they would hold the unlocked keys), a private umask, private dirs."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
from pathlib import Path

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PRIVATE_UMASK = 0o077


def disable_core_dumps() -> dict[str, bool]:
    """RLIMIT_CORE to 0 and, on Linux, prctl(PR_SET_DUMPABLE, 0): no core file, no ptrace by same-uid processes.

    A core dump or a debugger attached by another process of the daemon's user would read the data key
    while the wallet is unlocked. Returns which of the two took effect (both are best effort elsewhere).
    """
    done = {"rlimit_core": False, "not_dumpable": False}
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        done["rlimit_core"] = True
    except (ValueError, OSError):
        pass
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
            done["not_dumpable"] = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        pass
    return done


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make the directory itself 0700 when this call created it."""
    path = Path(path)
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask: make it exact


def private_sqlite_file(path: Path) -> None:
    """Create ``path`` 0600 if absent (never through a symlink) and make it and its -wal/-shm files 0600.

    SQLite creates a database with 0644 filtered by the umask, and its WAL and SHM files with the
    database file's mode: with umask 0 the wallet would be world-readable. Run before sqlite3.connect.
    """
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            os.chmod(f"{path}{suffix}", 0o600, follow_symlinks=False)
        except FileNotFoundError:
            pass
        except NotImplementedError:  # no lchmod on Linux: chmod only a regular file, never a link's target
            if not os.path.islink(f"{path}{suffix}"):
                os.chmod(f"{path}{suffix}", 0o600)
