"""Bad input and faults, one CLASS per test, each generated over a few representative inputs:
outputs that cannot be written, folder outputs, leftovers of killed runs, images read wrongly,
out-of-range numbers, non-finite results, memory that does not fit."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sfv_core import files, video_io
from sfv_core.errors import OutputError

CLIP = torch.linspace(0, 1, 3 * 16 * 16 * 3).reshape(3, 16, 16, 3)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(files.PART))


# ---- outputs that cannot be written --------------------------------------------------------


def raise_errno(code):
    def writer(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return writer


# Where each output kind hands its bytes to the OS: patched to fail as a full disk would.
WRITERS = {
    "clip.webp": ("PIL.Image.Image.save", lambda path: video_io.save_clip(CLIP, path, 7)),
    "clip.gif": ("PIL.Image.Image.save", lambda path: video_io.save_clip(CLIP, path, 7)),
    "clip.mp4": ("av.open", lambda path: video_io.save_clip(CLIP, path, 7)),
    "frames": ("PIL.Image.Image.save", lambda path: video_io.save_clip(CLIP, path, 7)),
    "clip.latent": ("pathlib.Path.write_bytes", lambda path: video_io.save_latent(torch.zeros(1, 3, 4, 2, 2), path)),
}


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk is full"), (errno.EACCES, "permission denied"), (errno.EROFS, "read-only")])
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_an_output_the_os_refuses_is_one_message_and_leaves_nothing(tmp_path, monkeypatch, name, code, words):
    target, write = WRITERS[name]
    monkeypatch.setattr(target, raise_errno(code))
    with pytest.raises(OutputError, match=words):
        write(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make, out, words", [
    (lambda root: (root / "a_file").touch(), "a_file/clip.webp", "a_file is a file, not a folder"),
    (lambda root: (root / "a_file").touch(), "a_file/deeper/frames", "a_file is a file, not a folder"),
    (lambda root: (root / "loop").symlink_to("loop"), "loop/clip.gif", "loop is a symbolic-link loop"),
    (lambda root: (root / "a_folder").mkdir(), "a_folder.webp", None),  # control: a plain new file
    (lambda root: (root / "clip.webp").mkdir(), "clip.webp", "existing folder"),
    (lambda root: (root / "frames").touch(), "frames", "is a file"),
    (lambda root: (root / "docs").mkdir() or (root / "docs" / "notes.txt").touch(), "docs", "holds other files"),
])
def test_an_output_path_in_the_way_is_named(tmp_path, make, out, words):
    make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    if words is None:
        video_io.save_clip(CLIP, tmp_path / out, 7)
        return
    with pytest.raises(OutputError, match=words):
        video_io.check_output_path(tmp_path / out)
        video_io.save_clip(CLIP, tmp_path / out, 7)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing replaced, nothing left


# ---- a PNG-frame folder is replaced whole ---------------------------------------------------


def frames_of(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.iterdir())]


@pytest.mark.parametrize("old_frames, new_frames", [(6, 3), (3, 6), (4, 4)])
def test_a_frame_folder_written_over_another_holds_only_the_new_clip(tmp_path, old_frames, new_frames):
    folder = tmp_path / "frames"
    video_io.save_clip(torch.zeros(old_frames, 8, 8, 3), folder, 7)
    video_io.save_clip(torch.ones(new_frames, 8, 8, 3), folder, 7)
    assert [f.max() for f in frames_of(folder)] == [255] * new_frames
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("killed_after", [0, 1, 2])
def test_a_kill_while_writing_frames_keeps_the_old_folder_whole(tmp_path, monkeypatch, killed_after):
    folder = tmp_path / "frames"
    video_io.save_clip(torch.zeros(4, 8, 8, 3), folder, 7)
    real_save, written = Image.Image.save, []

    def killed(self, *args, **kwargs):
        if len(written) == killed_after:
            raise KeyboardInterrupt
        written.append(1)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        video_io.save_clip(torch.ones(3, 8, 8, 3), folder, 7)
    assert [f.max() for f in frames_of(folder)] == [0] * 4
    assert leftovers(tmp_path) == []


# ---- leftovers of killed runs ---------------------------------------------------------------

DEAD_PID = 2**22 + 12345  # above Linux's pid_max: no process has it


@pytest.mark.parametrize("name, as_folder", [("clip.webp", False), ("frames", True), ("clip.latent", False)])
def test_temporaries_of_a_killed_run_are_removed_with_a_note_but_not_a_live_ones(tmp_path, caplog, name, as_folder):
    dead = tmp_path / f".{name}.{DEAD_PID}.00ff00ff.part"
    live = tmp_path / f".{name}.{os.getppid()}.00ff00ff.part"
    for part in (dead, live):
        part.mkdir() if as_folder else part.write_bytes(b"half")
    caplog.set_level("WARNING")
    if name.endswith(".latent"):
        video_io.save_latent(torch.zeros(1, 3, 4, 2, 2), tmp_path / name)
    else:
        video_io.save_clip(CLIP, tmp_path / name, 7)
    assert not dead.exists() and live.exists()
    assert str(dead) in caplog.text and "interrupted" in caplog.text
