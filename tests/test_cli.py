"""`python -m sfv_core` as a user runs it (in-process for speed), and the atomic writers."""

import av
import numpy as np
import pytest
import torch
from PIL import Image

from sfv_core import video_io
from sfv_core.cli import main

SIZE = ["--width", "64", "--height", "64", "--frames", "4"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny_svd.safetensors"
    assert main(["tiny-checkpoint", "--out", str(path)]) == 0
    return path


def generate(checkpoint, *extra):
    return main(["generate", "--checkpoint", str(checkpoint), *SIZE, *extra])


def test_generate_webp_mp4_png_and_latent(checkpoint, tmp_path):
    assert generate(checkpoint, "--out", str(tmp_path / "clip.webp"), "--save-latent", str(tmp_path / "clip.latent")) == 0
    with Image.open(tmp_path / "clip.webp") as webp:
        assert webp.n_frames == 4 and webp.size == (64, 64)
    latent = video_io.load_latent(tmp_path / "clip.latent")
    assert latent.shape == (1, 4, 4, 8, 8)

    assert generate(checkpoint, "--out", str(tmp_path / "clip.mp4"), "--seed", "3") == 0
    with av.open(str(tmp_path / "clip.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4

    assert generate(checkpoint, "--out", str(tmp_path / "frames")) == 0
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame_{i:05d}.png" for i in range(4)]


def test_the_run_says_what_it_runs_with(checkpoint, tmp_path, capsys):
    assert generate(checkpoint, "--compile", "off", "--out", str(tmp_path / "clip.webp")) == 0
    log = capsys.readouterr().err
    assert "SF-V runs on cpu: UNet float32, VAE float32, SDPA (" in log and "compile off, CUDA graphs off" in log


def test_no_flags_runs_the_bundled_toy_model(tmp_path, monkeypatch, capsys):
    """The README's main job: `python -m sfv_core generate` with nothing else."""
    from sfv_core.assets import TOY_CHECKPOINT, TOY_START_IMAGE
    from sfv_core.checkpoints import load_model

    assert TOY_CHECKPOINT.stat().st_size < 10_000_000  # ships in the repo
    monkeypatch.chdir(tmp_path)
    assert main(["generate"]) == 0
    assert "TOY" in capsys.readouterr().err
    with Image.open(tmp_path / "outputs" / "clip.webp") as webp:
        assert webp.n_frames == 8 and webp.size == (64, 64)
        frames = [np.asarray(webp.seek(i) or webp.convert("L"), dtype=np.float32) for i in range(webp.n_frames)]
    # A trained model, not noise: the first frame follows the start image (0.83 measured; a
    # random model gives ~0) and the clip moves.
    start = np.asarray(Image.open(TOY_START_IMAGE).convert("L"), dtype=np.float32)
    assert np.corrcoef(frames[0].ravel(), start.ravel())[0, 1] > 0.6
    assert np.abs(frames[-1] - frames[0]).mean() > 5
    assert load_model(TOY_CHECKPOINT).unet.config.block_out_channels == (64, 32, 32, 32)


def test_edit_an_existing_clip_and_several_start_images(checkpoint, tmp_path):
    assert generate(checkpoint, "--out", str(tmp_path / "a.webp"), "--save-latent", str(tmp_path / "a.latent")) == 0
    assert generate(checkpoint, "--out", str(tmp_path / "b.webp"), "--init-latent", str(tmp_path / "a.latent"), "--denoise", "0.5", "--steps", "2") == 0
    grey = tmp_path / "grey.png"
    Image.fromarray((np.random.default_rng(0).random((50, 80)) * 255).astype(np.uint8), mode="L").save(grey)
    rgba = tmp_path / "rgba.png"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 4)) * 255).astype(np.uint8), mode="RGBA").save(rgba)
    assert generate(checkpoint, "--image", str(grey), str(rgba), "--out", str(tmp_path / "two.gif"), "--save-latent", str(tmp_path / "two.latent")) == 0
    assert (tmp_path / "two_000.gif").exists() and (tmp_path / "two_001.gif").exists()
    assert video_io.load_latent(tmp_path / "two.latent").shape == (2, 4, 4, 8, 8)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--width", "100"], "width 100 is not a multiple of 8"),
        (["--image", "/nonexistent.png"], "does not exist"),
        (["--steps", "9"], "steps must be between 1 and 4"),
        (["--out", "clip.avi"], "unknown output type"),
        (["--denoise", "0.5"], "needs a latent clip to start from"),
    ],
)
def test_bad_input_is_one_clear_line(checkpoint, tmp_path, capsys, args, message):
    out = ["--out", str(tmp_path / "clip.webp")] if "--out" not in args else []
    assert main(["generate", "--checkpoint", str(checkpoint), *SIZE, *out, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "clip.webp").exists()


def frame_count(path) -> int:
    if path.suffix == ".mp4":
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))
    with Image.open(path) as animation:  # FFmpeg cannot decode animated WebP
        return animation.n_frames


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        video_io.save_clip(torch.rand(3, 16, 16, 3), tmp_path / "clip.gif", fps=7)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".webp", ".mp4", ".gif"])
def test_streamed_video_appears_whole_or_not_at_all(tmp_path, suffix):
    """Clips appended one by one make one video; a failure between clips leaves nothing behind."""
    path = tmp_path / f"long{suffix}"
    with video_io.open_video(path, fps=7) as video:
        for _ in range(3):
            video.append(torch.rand(4, 16, 16, 3))
            assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []  # not under its name while written
    assert frame_count(path) == 12
    if suffix == ".webp":
        with Image.open(path) as webp:
            webp.seek(1)
            webp.load()
            assert webp.info["loop"] == 0 and abs(webp.info["duration"] - 1000 / 7) <= 1

    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(RuntimeError, match="stopped"):
        with video_io.open_video(broken / f"long{suffix}", fps=7) as video:
            video.append(torch.rand(4, 16, 16, 3))
            raise RuntimeError("stopped between clips")
    assert list(broken.iterdir()) == []


def test_outputs_get_ordinary_file_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = video_io.save_clip(torch.rand(2, 16, 16, 3), tmp_path / "clip.gif", fps=7)
        weights = save_file_atomically(tmp_path / "w.safetensors")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert weights.stat().st_mode & 0o777 == 0o644  # safetensors itself writes 0600 files


def save_file_atomically(path):
    from sfv_core.checkpoints import save_single_file
    from sfv_core.models import TINY, build_random_model

    return save_single_file(build_random_model(TINY), path)


@pytest.fixture(scope="module")
def tiny_decoder_file(tmp_path_factory):
    from sfv_core import tiny_decoder

    torch.manual_seed(0)
    return tiny_decoder.save_tiny_decoder(tiny_decoder.TinyDecoder(tiny_decoder.TEST_CONFIG), tmp_path_factory.mktemp("decoder") / "tiny.safetensors")


def test_generate_with_a_tiny_decoder(checkpoint, tiny_decoder_file, tmp_path):
    from sfv_core import tiny_decoder

    latent = tmp_path / "clip.latent"
    assert generate(checkpoint, "--decoder", tiny_decoder_file, "--decode-chunk", "3", "--out", str(tmp_path / "fast"), "--save-latent", str(latent)) == 0
    assert generate(checkpoint, "--out", str(tmp_path / "full")) == 0
    frames = lambda folder: torch.stack([torch.from_numpy(np.asarray(Image.open(path))) for path in sorted(folder.iterdir())])
    fast, full = frames(tmp_path / "fast"), frames(tmp_path / "full")
    expected = tiny_decoder.decode_latents(tiny_decoder.load_tiny_decoder(tiny_decoder_file), video_io.load_latent(latent))[0]
    assert fast.shape == full.shape == (4, 64, 64, 3)
    assert (fast.float() - (expected * 255).round()).abs().max() <= 1  # PNG frames are 8-bit
    assert not torch.equal(fast, full)


def test_tiny_decoder_bad_input_is_one_clear_line(checkpoint, tiny_decoder_file, tmp_path, capsys):
    from sfv_core import tiny_decoder

    torch.manual_seed(0)
    other = tiny_decoder.save_tiny_decoder(tiny_decoder.TinyDecoder(tiny_decoder.TinyDecoderConfig(latent_channels=16, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1))), tmp_path / "other.safetensors")
    data = open(tiny_decoder_file, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 64])
    cases = [
        (["--decoder", other], "decodes 16-channel latents"),
        (["--decoder", str(tmp_path / "cut.safetensors")], "truncated"),
        (["--decoder", str(tmp_path / "none.safetensors")], "does not exist"),
        (["--decoder", tiny_decoder_file, "--decode-chunk", "-2"], "--decode-chunk must be between 0 and 4096"),
    ]
    for args, message in cases:
        assert main(["generate", "--checkpoint", str(checkpoint), *SIZE, "--out", str(tmp_path / "clip.webp"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
        assert not (tmp_path / "clip.webp").exists()
def test_abbreviated_options_are_refused(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--checkpoint", str(checkpoint), "--imag", "x.png", "--out", str(tmp_path / "clip.webp")])
    assert exit_info.value.code == 2 and "unrecognized arguments: --imag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--conf", "x.yaml"])
    assert "unrecognized arguments: --conf" in capsys.readouterr().err


def test_every_parser_refuses_abbreviations():
    """A new parser anywhere in the library or the benchmarks must say allow_abbrev=False too."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    calls = [(path.name, call) for path in [*(root / "sfv_core").rglob("*.py"), *(root / "benchmarks").glob("*.py")]
             for call in re.findall(r"(?:ArgumentParser|add_parser)\((?:[^()]|\([^()]*\))*\)", path.read_text())]
    assert len(calls) >= 8 and [c for c in calls if "allow_abbrev=False" not in c[1]] == []


def test_generate_help_has_no_none_defaults_and_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    for option in ("--seed SEED seed of the noise", "--device DEVICE auto", "--dtype {auto,fp32,fp16,bf16} UNet", "--vae-dtype {auto,fp32,fp16,bf16} VAE"):
        assert option in text


def test_the_run_is_announced_before_the_work(checkpoint, tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(checkpoint), "--steps", "2", "--out", str(tmp_path / "clip.webp"), "--width", "64", "--height", "64"]) == 0
    err = capsys.readouterr().err
    announced = err.index("making 1 clip of 14 frames at 64x64, 2 steps (SVD's defaults: set --width, --height and --frames for others)")
    assert announced < err.index("sample")


@pytest.fixture()
def no_loading(monkeypatch):
    """Any attempt to load weights fails the test: what is checked must be checked before."""
    from sfv_core.pipeline import SFVPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was refused")

    monkeypatch.setattr(SFVPipeline, "from_files", refuse)


def _unwritable(tmp_path):
    (tmp_path / "a_file").write_text("")
    return str(tmp_path / "a_file" / "clip.webp")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--width", "100"], "width 100 is not a multiple of 8"),
        (["--steps", "0"], "steps must be between 1 and 4"),
        (["--denoise", "1.5"], "--denoise must be between 0.001 and 1.0"),
        (["--denoise", "0.5"], "needs a latent clip"),
        (["--decode-chunk", "4", "--decode-overlap", "4"], "overlap must be between 0 and frames per chunk - 1 (3)"),
        (["--decode-chunk", "-1"], "--decode-chunk must be between 0 and 4096"),
        (["--out", "clip.avi"], "unknown output type"),
        (["--out", "UNWRITABLE"], "is a file, not a folder"),
        (["--out", "A_FOLDER.webp"], "is a folder, so a .webp file cannot be written there"),
        (["--save-latent", "UNWRITABLE"], "is a file, not a folder"),
        (["--frames", "1", "--checkpoint", "TOY"], "cannot make a single frame at 64x64"),
        (["--frames", "4000", "--checkpoint", "TOY"], "at 64x64 needs about"),
        (["--sfv-unet", "TOY"], "different architecture than the base model"),
        (["--checkpoint", "UNET_ONLY"], "holds only a UNet"),
        (["--sfv-unet", "START_IMAGE"], "is not a safetensors file"),
    ],
)
def test_bad_settings_are_refused_before_any_model_loads(checkpoint, tmp_path, capsys, no_loading, args, message):
    from sfv_core.assets import TOY_CHECKPOINT, TOY_START_IMAGE
    from sfv_core.checkpoints import save_unet_file
    from sfv_core.models import TINY, build_random_model

    unet_only = tmp_path / "unet.safetensors"
    if "UNET_ONLY" in args:
        save_unet_file(build_random_model(TINY).unet, unet_only)
    (tmp_path / "folder.webp").mkdir()
    names = {"UNWRITABLE": _unwritable(tmp_path) if "UNWRITABLE" in args else "", "A_FOLDER.webp": str(tmp_path / "folder.webp"), "TOY": str(TOY_CHECKPOINT), "UNET_ONLY": str(unet_only), "START_IMAGE": str(TOY_START_IMAGE)}
    args = [names.get(arg, arg) for arg in args]
    base = [] if "--checkpoint" in args else ["--checkpoint", str(checkpoint)]
    out = [] if "--out" in args else ["--out", str(tmp_path / "clip.webp")]
    size = ["--width", "64", "--height", "64"] if "--width" not in args else []
    assert main(["generate", *base, *size, *out, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "making" not in err
