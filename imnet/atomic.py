"""Atomic file writes: every output of this project is either complete or absent, never half-written.

Each file is written under a temporary name in its own folder and renamed into place (`os.replace`
is atomic on one file system), so an interrupted run leaves at most a hidden `.*.tmp` file.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_atomic", "check_output_dir"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place on success, delete it on error.

        with atomic_path("out.h5") as tmp:
            h5py.File(tmp, "w") ...
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of our own rather than mkstemp: mkstemp's 0600 mode would stick to the output.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (tmp, str(tmp)):
            e.filename = str(path)  # say which output failed, not which temporary name
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def check_output_dir(path: str | os.PathLike, *, option: str = "--out", file: str | os.PathLike | None = None) -> Path:
    """Refuse an output folder that cannot be created or written, before any work is done.

    Programs call this first, so a wrong output path costs a one-line message (naming ``option``)
    rather than a traceback after minutes of work, and nothing is created on the way: the folder
    itself is made only when the first file is written.

    Args:
        path: the folder outputs will be written to.
        option: the command-line option that named it, for the message.
        file: when the option named a file in ``path`` rather than the folder, that file.

    Raises:
        ValueError: ``path`` is a file, lies below a file, or its nearest existing folder is not
            writable by this user.
    """
    path = Path(path)
    given = Path(file) if file is not None else path
    if path.exists() and not path.is_dir():
        if file is None:
            raise ValueError(f"{option} {path} exists and is not a folder; choose another {option}")
        raise ValueError(f"{option} {given} cannot be created: {path} is a file, not a folder")
    existing = path.absolute()
    while not existing.exists():  # the nearest folder that exists, where mkdir would start
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {given} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {given} cannot be written: no permission to write in {existing}")
    return path
