"""Atomic, resumable run checkpoints.

A checkpoint is a folder `checkpoints/step-XXXXXXXX/` written by `accelerator.save_state`
(models, optimisers, every process's RNG states, the scaler and our registered objects:
heads, EMA, progress). Atomicity: everything is written into `.tmp-step-XXXXXXXX/`, fsynced,
renamed into place, and only then is the `latest` pointer file replaced (write temp, fsync,
os.replace, fsync the folder). A crash at any moment leaves `latest` naming a complete
checkpoint; leftover temp folders are removed by the next run, with a note.

Every checkpoint carries `manifest.json`: the size and SHA-256 of each file in it. Resuming
takes the folder `latest` names only if its files match the manifest exactly (nothing
missing, changed or added); otherwise it falls back to the newest checkpoint that does, and
says so. A run folder is never trusted to hold code: nothing in it is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from ..errors import CheckpointError

log = logging.getLogger("sfv_core.train")

LATEST = "latest"
PREFIX = "step-"
TEMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"


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


def _digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_listing(folder: Path) -> dict:
    """{relative path: [size, sha256]} of every file under `folder` but the manifest."""
    return {
        path.relative_to(folder).as_posix(): [path.stat().st_size, _digest(path)]
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def write_manifest(folder: Path) -> None:
    (folder / MANIFEST).write_text(json.dumps(file_listing(folder), indent=1), encoding="utf-8")


def damage(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint written by this trainer, or None when it is."""
    try:
        expected = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        found = file_listing(folder)
    except FileNotFoundError:
        return f"it has no {MANIFEST} (unfinished, or written by an older version that stored state as pickles)"
    except (OSError, ValueError, RecursionError) as error:
        return f"it cannot be read ({type(error).__name__}: {error})"
    if not isinstance(expected, dict):
        return f"its {MANIFEST} is not a file listing"
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            return f"{name} is missing"
        if name not in expected:
            return f"{name} is not a file the trainer wrote"
        if found[name] != expected[name]:
            return f"{name} is damaged (its size or checksum changed)"
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names, else the newest that checks out.

    None when there is none at all; a CheckpointError naming what was found when checkpoints
    exist but none is complete (training would otherwise restart at step 0 and prune them).
    """
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    named = None
    if pointer.is_file():
        named = pointer.read_text(encoding="utf-8", errors="replace").strip()
    candidates = sorted((p for p in root.glob(f"{PREFIX}*") if p.is_dir()), reverse=True)
    if named is not None and (root / named) in candidates:
        candidates.remove(root / named)
        candidates.insert(0, root / named)
    if named is None and not candidates:
        return None
    problems = []
    if named is not None and not (root / named).is_dir():
        problems.append(f"{LATEST} names {named!r}, which does not exist")
    for folder in candidates:
        reason = damage(folder)
        if reason is None:
            if problems:
                log.warning("resuming from %s instead: %s", folder, "; ".join(problems))
            return folder
        problems.append(f"{folder.name}: {reason}")
    raise CheckpointError(
        f"no complete checkpoint in {root} ({'; '.join(problems)}): restore a checkpoint, "
        "or set run.resume=false (or a new run.output_dir) to start from step 0."
    )


def temp_folder(run_dir: str | Path, step: int) -> Path:
    return checkpoint_root(run_dir) / f"{TEMP_PREFIX}{step_name(step)}"


def clear_temp_folders(run_dir: str | Path) -> None:
    """Remove half-written checkpoints left by a crash or a full disk (they can be large)."""
    root = checkpoint_root(run_dir)
    for path in root.glob(f"{TEMP_PREFIX}{PREFIX}*"):
        log.warning("removing %s, a checkpoint left half-written by an earlier run", path)
        shutil.rmtree(path, ignore_errors=True)


def publish(run_dir: str | Path, step: int, keep: int) -> Path:
    """Make a fully written temp folder the checkpoint of `step` and point `latest` at it."""
    root = checkpoint_root(run_dir)
    temporary, final = temp_folder(run_dir, step), root / step_name(step)
    write_manifest(temporary)
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
