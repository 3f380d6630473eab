"""Atomic file writes: a crash never leaves a half-written file under the real name."""

from __future__ import annotations

import os
import secrets
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


@contextmanager
def atomic_path(destination: str | os.PathLike):
    """Yield a temporary path beside `destination`; rename it into place only on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    open(temporary, "xb").close()  # created with the user's umask, like any file they save
    mode = os.stat(temporary).st_mode & 0o777
    try:
        yield temporary
        os.chmod(temporary, mode)  # writers that replace the file themselves (safetensors) leave 0600
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def check_writable(destination: str | os.PathLike) -> None:
    """Prove, before any work, that `destination` can be written: the nearest folder above it
    that exists takes a new file (atomic_path creates the missing folders below it)."""
    destination = Path(destination)
    folder = destination.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {destination}: {folder} is a file, not a folder. Choose another output path.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(f"cannot write {destination}: {folder} does not take new files ({error.strerror}). Choose another output path.") from None
