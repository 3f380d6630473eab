"""Long clips by extension: the sfv_core stage, the SFV Extend Clip node, `generate --length`."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from sfv_core import extend
from sfv_core.cli import main
from sfv_core.errors import InputError
from sfv_core.models import TINY, build_random_model
from sfv_core.pipeline import SFVPipeline
from test_nodes import HEIGHT, LATENT, PACK, WIDTH, models_root, run_node, sfv_model, start_images  # noqa: F401 (fixtures)

CONDITION = dict(width=WIDTH, height=HEIGHT, fps=7, motion_bucket_id=127, augmentation=0.02)
SETTINGS = extend.ExtendSettings(clip_frames=4, overlap=2)


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return SFVPipeline(build_random_model(TINY, seed=0))


def test_a_long_video_is_made_clip_by_clip(pipe):
    images = start_images(2)
    pieces = list(extend.generate_long(pipe, images, 8, seed=5, settings=SETTINGS, condition_settings=CONDITION))
    # First clip's 2 final frames, then 2 new clips of 2 frames (overlap + middle), then the last tail.
    assert [piece.shape[:2] for piece in pieces] == [(2, 2)] * 4
    assert all(piece.shape[2:] == (HEIGHT, WIDTH, 3) for piece in pieces)
    # The first clip is the ordinary generation with the same seed.
    plain = pipe.generate(images, seed=5, **dict(CONDITION, num_frames=4))
    assert torch.equal(pieces[0], plain.frames[:, :2])


def test_carried_frames_start_the_next_clip(pipe):
    latents = torch.randn(1, 4, *LATENT, generator=torch.Generator().manual_seed(0))
    frames = torch.rand(1, 4, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(1))
    _, _, tail = extend.split_clip(latents, frames, 2)
    assert torch.equal(tail.latents, latents[:, 2:]) and torch.equal(tail.last_frame, frames[:, -1])
    init = extend.initial_latents(tail, SETTINGS, (1, 4, *LATENT), seed=3)
    assert torch.equal(init[:, :2], latents[:, 2:])
    # The new frames start from unit-variance noise in model space (raw latents / 0.18215).
    assert 0.8 < float((init[:, 2:] * 0.18215).std()) < 1.2
    # Re-noised to 2.27 the carried frames steer the clip; from noise (denoise 1) they barely do.
    other = extend.Tail(-tail.latents, tail.frames, tail.last_frame)
    change = {}
    for level in (1 / 3, 1.0):
        settings = extend.ExtendSettings(clip_frames=4, overlap=2, overlap_denoise=level)
        a = extend.next_clip(pipe, tail, 0, settings, CONDITION, {})[1]
        b = extend.next_clip(pipe, other, 0, settings, CONDITION, {})[1]
        change[level] = float((a - b).abs().mean())
    assert change[1 / 3] > 10 * change[1.0]


def test_cross_fades(pipe):
    assert torch.allclose(extend.fade_in(2), torch.tensor([1 / 3, 2 / 3]))
    old, new = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    assert torch.allclose(extend.blend(old, new)[0, :, 0], torch.tensor([1 / 3, 2 / 3]))
    latents = torch.randn(1, 4, *LATENT, generator=torch.Generator().manual_seed(0))
    frames = torch.rand(1, 4, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(1))
    _, _, tail = extend.split_clip(latents, frames, 2)
    pixel = extend.next_clip(pipe, tail, 0, SETTINGS, CONDITION, {})
    latent = extend.next_clip(pipe, tail, 0, extend.ExtendSettings(clip_frames=4, overlap=2, crossfade="latent"), CONDITION, {})
    # Pixel: the clip's own frames blended with the held-back ones; latent: blended latents, decoded.
    unblended = pipe.decode(torch.cat([pixel[1], pixel[2].latents], dim=1))
    assert torch.allclose(pixel[0][:, :2], extend.blend(tail.frames, unblended[:, :2]), atol=1e-6)
    assert torch.allclose(latent[1][:, :2], extend.blend(tail.latents, pixel[1][:, :2]), atol=1e-6)


@pytest.mark.parametrize(
    "settings, call, message",
    [
        (dict(overlap=4), lambda s: extend.clips_for_new_frames(2, s), "overlap 4 must be between 0 and the clip's frames - 1 \\(3\\)"),
        (dict(), lambda s: extend.clips_for_new_frames(0, s), "new frames must be at least 1, got 0"),
        (dict(), lambda s: extend.clips_for_new_frames(-2, s), "new frames must be at least 1, got -2"),
        (dict(), lambda s: extend.clips_for_new_frames(5, s), "5 new frames cannot be made.*adds 2. Use 4 \\(2 clips\\) or 6 \\(3 clips\\)"),
        (dict(), lambda s: extend.clips_for_length(9, s), "length 9 cannot be made.*use --length 8 or 10"),
        (dict(), lambda s: extend.clips_for_length(3, s), "length 3 is shorter than one clip of 4 frames"),
        (dict(), lambda s: extend.clips_for_length(0, s), "length 0 makes no frames"),
        (dict(), lambda s: extend.clips_for_length(-5, s), "length -5 makes no frames"),
        (dict(crossfade="both"), lambda s: extend.clips_for_length(8, s), "crossfade must be one of"),
    ],
)
def test_bad_settings_are_one_clear_error(settings, call, message):
    with pytest.raises(InputError, match=message):
        call(extend.ExtendSettings(**dict(dict(clip_frames=4, overlap=2), **settings)))


# ---- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("extend") / "tiny_svd.safetensors"
    assert main(["tiny-checkpoint", "--out", str(path)]) == 0
    return path


def test_generate_length_streams_a_long_video(checkpoint, tmp_path, capsys):
    out = tmp_path / "long.webp"
    args = ["generate", "--checkpoint", str(checkpoint), "--width", "64", "--height", "64", "--frames", "4", "--overlap", "1", "--length", "10", "--out", str(out)]
    assert main(args) == 0
    with Image.open(out) as webp:
        assert webp.n_frames == 10 and webp.size == (64, 64)
    assert "clips: 100%" in capsys.readouterr().err  # the progress bar counts clips


def test_generate_length_decodes_with_a_tiny_decoder(checkpoint, tmp_path, monkeypatch):
    from sfv_core import tiny_decoder

    torch.manual_seed(0)
    decoder = tiny_decoder.save_tiny_decoder(tiny_decoder.TinyDecoder(tiny_decoder.TEST_CONFIG), tmp_path / "tiny.safetensors")
    calls = []
    decode = tiny_decoder.decode_latents
    monkeypatch.setattr(tiny_decoder, "decode_latents", lambda *args, **kwargs: calls.append(1) or decode(*args, **kwargs))
    args = ["generate", "--checkpoint", str(checkpoint), "--width", "64", "--height", "64", "--frames", "4", "--overlap", "1", "--length", "10"]
    assert main([*args, "--decoder", str(decoder), "--out", str(tmp_path / "fast")]) == 0
    assert len(calls) == 3  # every clip of the long video: 4 + 3 + 3 frames
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    fast, full = (sorted(p.name for p in (tmp_path / name).iterdir()) for name in ("fast", "full"))
    assert len(fast) == len(full) == 10
    assert (tmp_path / "fast" / fast[-1]).read_bytes() != (tmp_path / "full" / full[-1]).read_bytes()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--length", "11"], "length 11 cannot be made from clips of 4 frames with overlap 2 .* use --length 10 or 12"),
        (["--length", "10", "--overlap", "4"], "overlap 4 must be between 0 and the clip's frames - 1 \\(3\\)"),
        (["--length", "10", "--save-latent", "x.latent"], "--save-latent does not combine with --length"),
        (["--length", "10", "--init-latent", "x.latent"], "--init-latent does not combine with --length"),
    ],
)
def test_bad_length_is_refused_before_loading(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    # No such checkpoint: the error must come from the settings, before anything is loaded.
    args = ["generate", "--checkpoint", str(tmp_path / "absent.safetensors"), "--width", "64", "--height", "64", "--frames", "4", "--overlap", "2", "--out", "long.webp", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# ---- the node ----------------------------------------------------------------------------------


def extend_inputs(**overrides):
    return dict(dict(new_frames=4, clip_frames=3, overlap=1, seed=0, motion_bucket_id=127, fps=7, augmentation=0.02, overlap_denoise=0.667, crossfade="pixel", steps=1, condition_frame="last"), **overrides)


def test_node_chains_and_equals_sfv_core(sfv_model):
    conditioning, _ = run_node("SFVImageConditioner", sfv_model=sfv_model, image=start_images(1), width=WIDTH, height=HEIGHT, frames=3, fps=7,
                               motion_bucket_id=127, augmentation=0.02, resize="crop", variant="reference")
    (latent,) = run_node("SFVOneStepSampler", sfv_model=sfv_model, conditioning=conditioning, seed=1, steps=1)
    (frames,) = run_node("SFVTemporalVAEDecode", sfv_model=sfv_model, samples=latent, frames_per_chunk=0, overlap=0, frames_per_clip=0)
    once, once_latent = run_node("SFVExtendClip", sfv_model=sfv_model, clip=frames, latent=latent, **extend_inputs())
    assert once.shape == (7, HEIGHT, WIDTH, 3) and torch.equal(once[:2], frames[:2])
    assert once_latent["samples"].shape == (7, *LATENT) and once_latent["sfv_frames_per_clip"] == 7
    twice, twice_latent = run_node("SFVExtendClip", sfv_model=sfv_model, clip=once, latent=once_latent, **extend_inputs(seed=9))
    assert twice.shape == (11, HEIGHT, WIDTH, 3) and torch.equal(twice[:6], once[:6]) and twice_latent["samples"].shape == (11, *LATENT)

    settings = extend.ExtendSettings(clip_frames=3, overlap=1, overlap_denoise=0.667)
    direct, direct_latents = extend.extend_clip(sfv_model.pipeline, frames.unsqueeze(0), latent["samples"].unsqueeze(0), 4, 0, settings, dict(fps=7, motion_bucket_id=127, augmentation=0.02))
    assert torch.equal(once, direct[0]) and torch.equal(once_latent["samples"], direct_latents[0])
    # Without the LATENT the overlap is encoded from the frames: a clip all the same.
    pixels_only, pixel_latent = run_node("SFVExtendClip", sfv_model=sfv_model, clip=frames, **extend_inputs())
    assert pixels_only.shape == once.shape and pixel_latent["samples"].shape == (5, *LATENT)
    no_overlap, _ = run_node("SFVExtendClip", sfv_model=sfv_model, clip=frames, **extend_inputs(overlap=0, new_frames=3))
    assert no_overlap.shape == (6, HEIGHT, WIDTH, 3) and torch.equal(no_overlap[:3], frames)


def test_node_refuses_bad_settings_at_validation():
    cls = PACK.NODE_CLASS_MAPPINGS["SFVExtendClip"]
    check = lambda **values: cls.VALIDATE_INPUTS(**{key: value for key, value in extend_inputs(**values).items() if key in ("new_frames", "clip_frames", "overlap", "overlap_denoise", "crossfade", "steps", "condition_frame")})
    assert check() is True
    assert check(overlap=3).startswith("overlap 3 must be between 0 and the clip's frames - 1 (2)")
    assert "5 new frames cannot be made" in check(new_frames=5) and "Use 4 (2 clips) or 6 (3 clips)" in check(new_frames=5)
    assert cls.VALIDATE_INPUTS(new_frames=5, clip_frames=None, overlap=1, overlap_denoise=0.5, crossfade="pixel", steps=1, condition_frame="last") is True  # linked
    # ComfyUI leaves the inputs VALIDATE_INPUTS takes to it: its message, not the bare minimum, is shown.
    with pytest.raises(ValueError, match="prompt validation: new frames must be at least 1, got 0: each clip adds 2"):
        run_node("SFVExtendClip", sfv_model=None, clip=torch.rand(3, HEIGHT, WIDTH, 3), **extend_inputs(new_frames=0))


def test_node_refuses_a_latent_of_another_size_before_any_work(sfv_model, monkeypatch):
    monkeypatch.setattr(sfv_model, "use", lambda *parts, **kw: pytest.fail("loaded models before checking the inputs"))
    clip = torch.rand(3, HEIGHT, WIDTH, 3)
    with pytest.raises(ValueError, match="the LATENT holds 3 frames of 4-channel latents of a 128x64 video, but the clip is 3 frames of 64x64") as excinfo:
        run_node("SFVExtendClip", sfv_model=sfv_model, clip=clip, latent={"samples": torch.zeros(3, 4, 8, 16)}, **extend_inputs())
    assert type(excinfo.value) is ValueError
    with pytest.raises(ValueError, match="width 60 is not a multiple of 8"):
        run_node("SFVExtendClip", sfv_model=sfv_model, clip=torch.rand(3, HEIGHT, 60, 3), **extend_inputs())
    with pytest.raises(ValueError, match="the clip has 1 frames, fewer than the overlap 2"):
        run_node("SFVExtendClip", sfv_model=sfv_model, clip=clip[:1], **extend_inputs(overlap=2, new_frames=1))


@pytest.mark.parametrize("condition_frame, index", [("last", -1), ("first_shared", 2)])
def test_the_condition_frame(pipe, monkeypatch, condition_frame, index):
    frames = torch.rand(1, 4, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(1))
    _, _, tail = extend.split_clip(torch.zeros(1, 4, *LATENT), frames, 2)
    seen = []
    real_condition = pipe.condition
    monkeypatch.setattr(pipe, "condition", lambda images, **kw: seen.append(images) or real_condition(images, **kw))
    extend.next_clip(pipe, tail, 0, extend.ExtendSettings(clip_frames=4, overlap=2, condition_frame=condition_frame), CONDITION, {})
    assert torch.equal(seen[0], frames[:, index])
