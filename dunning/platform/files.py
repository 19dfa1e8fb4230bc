"""Private files: the data directory (0700) and the database files in it (0600).

The embedded defaults keep every customer's contact details, the ledger and the Stripe signing
secrets in SQLite files under DUNNING_DATA_DIR; no other local user may read them, whatever the
process's umask. Directories the engine creates are 0700, files 0600; an existing data directory
or database file of ours that is open to others is tightened (it is ours, so chmod succeeds).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError):
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o777 & ~mode:
            os.chmod(path, st.st_mode & 0o777 & mode)


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700; tighten it if it exists and is ours."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for created in missing:
        with contextlib.suppress(OSError):
            os.chmod(created, DIR_MODE)  # mkdir's mode is filtered by the umask
    _tighten(path, DIR_MODE)
    return path


def private_file(path: Path, *, create: bool = True) -> Path:
    """Create `path` empty as 0600 unless it exists; tighten an existing one that is ours.
    SQLite gives its -wal and -shm files the database file's mode. `create=False` for a file
    another program creates itself (the Temporal dev server takes an existing file, even an
    empty one, as a database it already set up): then only its directory is made private
    (0700, which keeps others out of whatever appears in it) and an existing file tightened."""
    if not path.parent.exists():
        private_dir(path.parent)
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    _tighten(path, FILE_MODE)
    for suffix in ("-wal", "-shm", "-journal"):
        _tighten(path.with_name(path.name + suffix), FILE_MODE)
    return path


__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file"]
