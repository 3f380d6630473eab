"""Atomic, resumable run checkpoints.

A checkpoint is a folder `checkpoints/step-XXXXXXXX/` written by `accelerator.save_state`
(models, optimisers, every process's RNG states, the scaler and our registered objects:
heads, EMA, progress). Atomicity: everything is written into `.tmp-step-XXXXXXXX/`, fsynced,
renamed into place, and only then is the `latest` pointer file replaced (write temp, fsync,
os.replace, fsync the folder). A crash at any moment leaves `latest` naming a complete
checkpoint; leftover temp folders are removed by the next save.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LATEST = "latest"
PREFIX = "step-"
TEMP_PREFIX = ".tmp-"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (folders: the rename inside them)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. folders cannot be opened on Windows; nothing to flush there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        fsync_path(path)
    fsync_path(folder)


def write_pointer(root: Path, name: str) -> None:
    """Atomically make `root/latest` contain `name`."""
    temporary = root / f"{TEMP_PREFIX}{LATEST}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, root / LATEST)
    fsync_path(root)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder `latest` names, or None when there is no complete checkpoint."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text(encoding="utf-8").strip()
    return folder if folder.is_dir() else None


def temp_folder(run_dir: str | Path, step: int) -> Path:
    return checkpoint_root(run_dir) / f"{TEMP_PREFIX}{step_name(step)}"


def clear_temp_folders(run_dir: str | Path) -> None:
    """Remove half-written checkpoints left by a crash."""
    root = checkpoint_root(run_dir)
    for path in root.glob(f"{TEMP_PREFIX}{PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def publish(run_dir: str | Path, step: int, keep: int) -> Path:
    """Make a fully written temp folder the checkpoint of `step` and point `latest` at it."""
    root = checkpoint_root(run_dir)
    temporary, final = temp_folder(run_dir, step), root / step_name(step)
    fsync_tree(temporary)
    if final.exists():  # the same step saved again (a re-run of a finished step): replace it
        shutil.rmtree(final)
    os.rename(temporary, final)
    fsync_path(root)
    write_pointer(root, final.name)
    prune(root, keep, final)
    return final


def prune(root: Path, keep: int, current: Path) -> None:
    """Delete all but the newest `keep` checkpoints (never the current one)."""
    finished = sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())
    for old in finished[: max(0, len(finished) - max(keep, 1))]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
