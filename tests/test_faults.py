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
from sfv_core.errors import InputError, OutputError

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
    "clip.webp": ("av.open", lambda path: video_io.save_clip(CLIP, path, 7)),
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
    (lambda root: (root / "clip.webp").mkdir(), "clip.webp", "is a folder, so a .webp file cannot be written"),
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


# ---- images read as ComfyUI reads them ------------------------------------------------------


def gradient(width=48, height=32) -> np.ndarray:
    """RGB uint8 with distinct corners (orientation is checkable)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 128)], -1).astype(np.uint8)


@pytest.mark.parametrize("orientation, turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied_like_comfyuis_loadimage(tmp_path, orientation, turn):
    stored = gradient()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=100, subsampling=0)
    loaded = video_io.load_image(tmp_path / "photo.jpg")[0].numpy() * 255
    expected = turn(stored).astype(np.float32)
    assert loaded.shape == expected.shape and np.abs(loaded - expected).mean() < 3


def save_mode(path: Path, mode: str, grey: np.ndarray) -> None:
    """Store the grey ramp `grey` (uint8) in `mode`, as files of that mode are found in the wild."""
    if mode == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # 16-bit PNG
    elif mode == "I":
        Image.fromarray(grey.astype(np.int32) * 257, mode="I").save(path)  # 32-bit TIFF, 16-bit values
    elif mode == "F":
        Image.fromarray(grey.astype(np.float32), mode="F").save(path)  # float TIFF on Pillow's 0..255 scale
    elif mode == "LAB":
        from PIL import ImageCms

        rgb = Image.fromarray(np.repeat(grey[..., None], 3, -1))
        ImageCms.profileToProfile(rgb, ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), outputMode="LAB").save(path)
    elif mode == "CMYK":
        Image.fromarray(np.repeat(grey[..., None], 3, -1)).convert("CMYK").save(path)
    elif mode == "P":
        Image.fromarray(np.repeat(grey[..., None], 3, -1)).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)
    else:
        Image.fromarray(grey).convert(mode).save(path)


@pytest.mark.parametrize("mode, suffix", [("I;16", ".png"), ("I", ".tif"), ("F", ".tif"), ("LAB", ".tif"), ("CMYK", ".jpg"), ("P", ".png"), ("L", ".png"), ("LA", ".png")])
def test_every_image_mode_reads_as_the_picture_it_holds(tmp_path, mode, suffix):
    from sfv_core.conditioning import to_rgb

    grey = np.tile(np.linspace(0, 255, 40).round().astype(np.uint8), (24, 1))
    save_mode(tmp_path / f"ramp{suffix}", mode, grey)
    rgb = to_rgb(video_io.load_image(tmp_path / f"ramp{suffix}"))[0].numpy() * 255
    assert np.abs(rgb.mean(-1) - grey).max() < 8, f"{mode}: read as something else"


@pytest.mark.parametrize("size, fit", [((2400, 1600), (64, 64)), ((1600, 2400), (96, 64)), ((640, 640), (64, 64))])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_large_start_image_is_reduced_as_it_is_read(tmp_path, size, fit, suffix):
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(tmp_path / f"big{suffix}")
    loaded = video_io.load_image(tmp_path / f"big{suffix}", fit=fit)
    height, width = loaded.shape[1:3]
    assert width >= 2 * fit[0] and height >= 2 * fit[1]  # detail enough for the resize that follows
    assert width * height < 4 * 4 * fit[0] * fit[1] * max(size) / min(size)  # but nowhere near full size
    assert abs(width / height - size[0] / size[1]) < 0.05


def test_a_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40000 pixels > 2 x the limit: Pillow refuses
    with pytest.raises(InputError, match="too large to read safely.*downscale"):
        video_io.load_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("shape", [(1, 500), (500, 1), (1, 1), (2, 3000)])
@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
def test_thin_images_resize_in_every_mode(shape, mode):
    from sfv_core.conditioning import resize_images

    out = resize_images(torch.rand(1, *shape, 3), 64, 48, mode)
    assert out.shape == (1, 3, 48, 64) and torch.isfinite(out).all()


# ---- one table of ranges: nodes, command line and trainer agree ---------------------------


def test_nodes_cli_and_trainer_read_the_same_ranges():
    from test_nodes import PACK
    from sfv_core import limits

    declared = {}
    for cls in PACK.NODE_CLASS_MAPPINGS.values():
        spec = cls.INPUT_TYPES()
        for name, entry in {**spec["required"], **spec.get("optional", {})}.items():
            if len(entry) > 1 and "min" in entry[1]:
                declared[(cls.__name__, name)] = (entry[1]["min"], entry[1]["max"])
    expected = {
        ("SFVImageConditioner", "width"): limits.WIDTH, ("SFVImageConditioner", "fps"): limits.FPS,
        ("SFVImageConditioner", "motion_bucket_id"): limits.MOTION_BUCKET, ("SFVImageConditioner", "augmentation"): limits.AUGMENTATION,
        ("SFVOneStepSampler", "seed"): limits.SEED, ("SFVOneStepSampler", "denoise"): limits.DENOISE,
        ("SFVTemporalVAEDecode", "frames_per_chunk"): limits.DECODE_CHUNK,
    }
    for key, limit in expected.items():
        assert declared[key] == (limit.low, limit.high), key


@pytest.mark.parametrize("setting, value, words", [
    ("fps", 100000, "fps must be between 1 and 1024"), ("motion_bucket_id", -1, "motion bucket id must be between"),
    ("motion_bucket_id", 10**9, "motion bucket id must be between"), ("augmentation", float("nan"), "augmentation must be between"),
    ("augmentation", float("inf"), "augmentation must be between"), ("augmentation", -0.5, "augmentation must be between"),
])
def test_out_of_range_conditioning_numbers_are_refused_by_the_library(setting, value, words):
    from sfv_core import conditioning
    from sfv_core.models import TINY, build_random_model

    settings = dict(width=64, height=64, num_frames=2, fps=7, motion_bucket_id=127, augmentation=0.02)
    with pytest.raises(InputError, match=words):
        conditioning.condition(build_random_model(TINY), torch.rand(1, 64, 64, 3), **{**settings, setting: value})


@pytest.mark.parametrize("override, words", [
    ("run.steps=0", "run.steps must be at least 1"), ("run.steps=-5", "run.steps must be at least 1"),
    ("optim.ema_decay=1.5", "ema_decay must be between 0 and 1"), ("optim.ema_decay=-0.1", "ema_decay must be between 0 and 1"),
    ("run.checkpoint_every=0", "checkpoint_every and run.log_every must be at least 1"), ("run.log_every=0", "must be at least 1"),
    ("optim.lr_generator=.nan", "optim.lr_generator must be a finite number"), ("optim.lr_discriminator=.inf", "must be a finite number"),
    ("data.fps=100000", "data.fps must be between"), ("data.motion_bucket_id=-3", "data.motion_bucket_id must be between"),
    ("data.augmentation=20", "data.augmentation must be between"), ("run.seed=-1", "run.seed must be between"),
])
def test_out_of_range_trainer_settings_are_refused(override, words):
    from sfv_core.train.config import load_config

    config = load_config(None, ["model.path=tiny-random", "data.path=videos", override])
    with pytest.raises(InputError, match=words):
        config.validate()


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"), (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "is not text"), (b"- a\n- b\n", "holds a list, not a mapping"),
    (b"run: !!python/object/apply:os.system ['true']\n", "not plain YAML.*no Python tags"), (b"run: [unclosed\n", "not plain YAML at line"),
    (b"42\n", "holds a int, not a mapping"),
])
def test_a_bad_trainer_config_file_is_one_message(tmp_path, content, words):
    from sfv_core.train.config import load_config

    path = tmp_path / "train.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=words):
        load_config(path)


# ---- memory: every stage is estimated before it runs ---------------------------------------


@pytest.mark.parametrize("files, expected", [
    ({"memory.max": "1073741824\n", "memory.current": "268435456\n"}, 805306368),  # cgroup v2
    ({"memory.max": "max\n", "memory.current": "268435456\n"}, None),  # v2, no limit
    ({"memory/memory.limit_in_bytes": "536870912\n", "memory/memory.usage_in_bytes": "536870912\n"}, 0),  # v1, full
    ({"memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "1\n"}, None),  # v1, no limit
    ({}, None),
])
def test_the_cgroup_limit_is_read(tmp_path, files, expected):
    from sfv_core import memory

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert memory.cgroup_headroom(tmp_path) == expected


def test_free_memory_is_the_smaller_of_the_host_and_the_cgroup(monkeypatch):
    from sfv_core import memory

    monkeypatch.setattr(memory, "mem_available", lambda: 8 << 30)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: 2 << 30)
    assert memory.free_bytes(torch.device("cpu")) == 2 << 30


@pytest.mark.parametrize("argv, words", [
    (["--width", "8192", "--height", "8192"], r"needs about .* GiB, but 1.0 GiB is free .* use a size of at most \d+x\d+"),
    (["--width", "4096", "--height", "2304", "--frames", "14"], r"use .*a size of at most \d+x\d+"),
    (["--width", "64", "--height", "64", "--frames", "400"], r"decoding 400 frames at once .* frames per chunk \(--decode-chunk\) of \d+ or fewer"),
    (["--width", "64", "--height", "64", "--frames", "4000", "--decode-chunk", "8"], r"the UNet pass .* at most \d+ frames at this size"),
])
def test_a_generation_that_cannot_fit_is_refused_before_loading_with_what_fits(tmp_path, monkeypatch, capsys, argv, words):
    from sfv_core import checkpoints, memory
    from sfv_core.cli import TOY_CHECKPOINT, main

    monkeypatch.setattr(memory, "free_bytes", lambda device: 1 << 30)
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    assert main(["generate", "--checkpoint", str(TOY_CHECKPOINT), *argv, "--out", str(tmp_path / "clip.webp")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(words, err), err
    assert list(tmp_path.iterdir()) == []


def test_the_largest_size_offered_fits():
    from sfv_core import memory
    from sfv_core.models import FULL as full

    for width, height, frames in ((8192, 8192, 14), (2048, 1152, 25), (1024, 576, 14)):
        free = 4 << 30
        stages = memory.generation_stages(full.unet, full.vae, torch.float32, torch.float32, 1, frames, height, width)
        worst = max(stages, key=lambda s: s.need)
        fits_w, fits_h = memory.largest_size(width, height, worst.need, free)
        smaller = memory.generation_stages(full.unet, full.vae, torch.float32, torch.float32, 1, frames, fits_h, fits_w)
        assert all(s.need <= free for s in smaller) and fits_w % 8 == 0 and fits_h % 8 == 0
