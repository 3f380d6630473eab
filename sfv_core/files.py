"""Atomic file and folder writes: a crash never leaves a half-written output under the real name.

Temporaries are hidden siblings named `.NAME.PID.RANDOM.part`. One left by a killed process
(its PID no longer runs) is removed, with a note, the next time the same output is written.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

log = logging.getLogger("sfv_core")

PART = ".part"


def _temporary_name(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}.{os.getpid()}.{secrets.token_hex(4)}{PART}")


def _running(pid: int) -> bool:
    """Whether process `pid` runs; True where that cannot be told (no /proc), so nothing is removed."""
    if not Path("/proc/self").is_dir():
        return True
    return Path(f"/proc/{pid}").exists()


def remove_stale_parts(destination: Path) -> None:
    """Delete temporaries of `destination` left behind by processes that no longer run."""
    prefix = f".{destination.name}."
    for part in destination.parent.glob(f"{glob.escape(prefix)}*{PART}"):
        pid = part.name[len(prefix):].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            log.warning("removing %s, left half-written by an interrupted run", part)
            if part.is_dir() and not part.is_symlink():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)


WRITE_PROBLEMS = {
    errno.ENOSPC: ("the disk is full", "free some space or write to another disk"),
    getattr(errno, "EDQUOT", errno.ENOSPC): ("the disk quota is used up", "free some space or write to another disk"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("permission denied", "choose a folder you can write to"),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.ENOTDIR: ("a file is in the way where a folder is needed", "choose a path whose parents are folders"),
    errno.EISDIR: ("it is an existing folder", "give a file name, not a folder"),
    errno.EEXIST: ("a file is in the way", "choose another path"),
    errno.ELOOP: ("the path is a symbolic-link loop", "fix the link or choose another path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.ENOENT: ("its folder cannot hold new files", "choose another folder"),
}


def _obstacle(path: Path) -> str | None:
    """The parent of `path` that is a file or a symbolic-link loop, said in words."""
    for parent in reversed(path.parents):
        if parent.is_symlink():
            try:
                parent.resolve(strict=True)
            except (OSError, RuntimeError):
                return f"{parent} is a symbolic-link loop (or points nowhere); fix the link or choose another path"
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a folder; choose a path whose parents are folders"
    return None


def write_error(path: Path, error: OSError) -> OSError | OutputError:
    """A user-fixable OSError as an OutputError naming the output, the problem and the fix."""
    problem = WRITE_PROBLEMS.get(error.errno)
    if problem is None:
        return error
    if error.errno in (errno.ENOTDIR, errno.EEXIST, errno.ELOOP, errno.ENOENT):
        obstacle = _obstacle(path / "_")  # `path` itself may be the folder in the way
        if obstacle:
            return OutputError(f"cannot write {path}: {obstacle}.")
    return OutputError(f"cannot write {path}: {problem[0]}; {problem[1]}.")


@contextmanager
def writing(path: str | os.PathLike):
    """Turn OSErrors of writing `path` into OutputErrors (disk full, permissions, ...)."""
    try:
        yield
    except OSError as error:
        raise write_error(Path(path), error) from None


@contextmanager
def atomic_path(destination: str | os.PathLike):
    """Yield a temporary path beside `destination`; rename it into place only on success."""
    destination = Path(destination)
    with writing(destination):
        if destination.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(destination)
        temporary = _temporary_name(destination)
        open(temporary, "xb").close()  # created with the user's umask, like any file they save
        mode = os.stat(temporary).st_mode & 0o777
        try:
            yield temporary
            os.chmod(temporary, mode)  # writers that replace the file themselves (safetensors) leave 0600
            os.replace(temporary, destination)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


@contextmanager
def atomic_folder(destination: str | os.PathLike):
    """Yield an empty temporary folder beside `destination`; on success it replaces `destination`.

    The old folder is renamed aside, the new one renamed in, then the old one deleted: a kill
    while writing leaves the old folder whole, never a mix of two outputs or stale extra files.
    """
    destination = Path(destination)
    with writing(destination):
        if destination.exists() and not destination.is_dir():
            raise FileExistsError(errno.EEXIST, "is a file")
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(destination)
        temporary = _temporary_name(destination)
        temporary.mkdir()
        try:
            yield temporary
            if destination.exists():
                old = _temporary_name(destination)
                os.rename(destination, old)
                os.rename(temporary, destination)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(temporary, destination)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise


def check_writable(destination: str | os.PathLike) -> None:
    """Prove, before any work, that `destination` can be written: the nearest folder above it
    that exists takes a new file (atomic_path creates the missing folders below it)."""
    destination = Path(destination)
    folder = destination.parent
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    with writing(destination):
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        with tempfile.TemporaryFile(dir=folder):
            pass
