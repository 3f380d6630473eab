"""Atomic file writes: a crash never leaves a half-written file under the real name."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path


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
