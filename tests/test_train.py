"""The trainer on the CPU with a tiny random SVD: data, gradients, resume, atomic checkpoints, export, CLI."""

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sfv_core import checkpoints
from sfv_core.errors import CheckpointError, InputError, OutputError
from sfv_core.models import TINY, build_random_model
from sfv_core.sampling import Conditioning, denoise, sample, seeded_generator
from sfv_core.train import checkpointing
from sfv_core.train.cli import add_train_parser, run_train
from sfv_core.train.config import TrainConfig, help_text, load_config, sections
from sfv_core.train.data import ClipOrder, VideoClipDataset, item_rng, scan, source_indices
from sfv_core.train.encoding import encode_clips
from sfv_core.train.discriminator import DiscriminatorHeads, FrozenUNetEncoder
from sfv_core.train.losses import approximate_r1_penalty, per_clip_score, r1_penalty
from sfv_core.train.trainer import SINGLE_FILE, UNET_FILE, Trainer

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT, FRAMES = 64, 48, 4


def write_video(path, frames, codec="mpeg4", rate=20):
    """A 64x48 clip whose frame i has green level 10 * i (so frame order is checkable)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(frames):
            image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            image[..., 1] = 10 * i
            image[:, (3 * i) % 56 : (3 * i) % 56 + 8, 0] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.mp4", 20)
    write_video(root / "b.mp4", 20, codec="libx264")
    write_video(root / "c.webm", 20, codec="libvpx-vp9")  # webm carries no frame count: probed by duration
    write_video(root / "short.mp4", 5)  # 0.25 s: too short for 4 frames at 7 fps
    (root / "corrupt.mp4").write_bytes(os.urandom(3000))
    frames = root / "frames_clip"
    frames.mkdir()
    for i in range(8):
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), 30 * i, np.uint8)).save(frames / f"{i:03d}.png")
    return root


def tiny_config_sets(videos, out, *overrides) -> list[str]:
    """--set pairs for a tiny CPU run (tiny random model, 4 frames of 64x48, fp32)."""
    return [
        "model.path=tiny-random", f"data.path={videos}", f"run.output_dir={out}",
        f"num_frames={FRAMES}", f"width={WIDTH}", f"height={HEIGHT}", "frame_folder_fps=14", "num_workers=0",
        "gradient_accumulation=2", "mixed_precision=fp32", "head_channels=32", "cond_channels=32",
        "r1_interval=2", "log_every=1", "preview_every=0", "checkpoint_every=2", "export_dtype=fp32", *overrides,
    ]


def tiny_config(videos, out, *overrides) -> TrainConfig:
    return load_config(None, tiny_config_sets(videos, out, *overrides))


# ---- data ---------------------------------------------------------------------------------


def test_scan_skips_and_counts_bad_sources(videos):
    report = scan(videos, FRAMES, 7.0, 14.0)
    assert sorted(Path(s.path).name for s in report.sources) == ["a.mp4", "b.mp4", "c.webm", "frames_clip"]
    assert [Path(p).name for p in report.unreadable] == ["corrupt.mp4"]
    assert [Path(p).name for p in report.too_short] == ["short.mp4"]


def test_clips_are_resampled_resized_and_deterministic(videos):
    sources = {Path(s.path).name: s for s in scan(videos, FRAMES, 7.0, 14.0).sources}
    dataset = VideoClipDataset(list(sources.values()), FRAMES, 7.0, 32, 32, seed=0)
    video_clip = dataset.read_clip(sources["a.mp4"], 0.0)
    assert video_clip.shape == (FRAMES, 3, 32, 32) and video_clip.min() >= -1 and video_clip.max() <= 1
    # 20 fps -> 7 fps: source frames 0, 3, 6, 9 (rounded 20/7 steps).
    with av.open(str(videos / "a.mp4")) as container:
        source_green = [frame.to_ndarray(format="rgb24")[..., 1].mean() for frame in container.decode(video=0)]
    full_size = VideoClipDataset(list(sources.values()), FRAMES, 7.0, WIDTH, HEIGHT, seed=0).read_clip(sources["a.mp4"], 0.0)
    green = ((full_size[:, 1].mean(dim=(1, 2)) + 1) * 127.5).tolist()
    assert np.allclose(green, [source_green[i] for i in (0, 3, 6, 9)], atol=0.01)
    folder_clip = dataset.read_clip(sources["frames_clip"], 0.0)  # 14 -> 7 fps: every 2nd frame
    assert np.allclose(((folder_clip.mean(dim=(1, 2, 3)) + 1) * 127.5).tolist(), [0, 60, 120, 180], atol=1)
    webm = dataset.read_clip(sources["c.webm"], 0.99)  # the last valid start: frames 10, 13, 16, 19
    assert webm.shape == (FRAMES, 3, 32, 32)
    first, again = dataset[(3, 1)], dataset[(3, 1)]
    assert torch.equal(first["frames"], again["frames"]) and int(first["fallbacks"]) == 0
    assert source_indices(5, 20.0, 7.0, FRAMES, 0.0) is None


def test_source_failing_mid_run_is_replaced_and_counted(videos, tmp_path):
    sources = scan(videos, FRAMES, 7.0, 14.0).sources
    broken = tmp_path / "gone.mp4"
    broken.write_bytes(b"")  # passed the scan once, unreadable now
    sources = [type(sources[0])(str(broken), "video", 20, 20.0)] + sources
    item = VideoClipDataset(sources, FRAMES, 7.0, WIDTH, HEIGHT, seed=0)[(0, 0)]
    assert int(item["fallbacks"]) == 1 and item["frames"].shape == (FRAMES, 3, HEIGHT, WIDTH)


def test_clip_order_is_resumable_and_split_across_processes():
    order = ClipOrder(10, batch_size=2, seed=5)
    assert order.batches(3, start=2) == order.batches(3)[2:]
    assert order.batches(0) != order.batches(1)
    ranks = [ClipOrder(10, 2, 5, rank, 2).batches(0) for rank in range(2)]
    seen = [index for batches in ranks for batch in batches for _, index in batch]
    assert len(seen) == len(set(seen)) == 8
    with pytest.raises(InputError):
        ClipOrder(3, batch_size=2, seed=0, rank=0, world_size=2)


# ---- discriminator and one step ----------------------------------------------------------


def tiny_cond(clips=2, frames=FRAMES, h=6, w=8):
    generator = torch.Generator().manual_seed(1)
    return Conditioning(torch.randn(clips, 1, 32, generator=generator), torch.randn(clips, 4, h, w, generator=generator), torch.tensor([[6.0, 127.0, 0.02]] * clips), frames)


def test_encoder_sees_what_the_unet_sees_in_denoise():
    unet = build_random_model(TINY).unet
    encoder = FrozenUNetEncoder(unet)
    cond, x, sigma = tiny_cond(), torch.randn(2, FRAMES, 4, 6, 8), torch.tensor([0.5, 30.0])
    seen = []
    hooks = [block.register_forward_hook(lambda m, i, out: seen.append(out[0])) for block in unet.down_blocks]
    with torch.no_grad():
        denoise(unet, x, sigma, cond)
        features = encoder(x, sigma, cond)
    for hook in hooks:
        hook.remove()
    assert len(features) == 4 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(features, seen))


def test_features_before_downsample_are_read_at_twice_the_resolution():
    unet = build_random_model(TINY).unet
    cond, x, sigma = tiny_cond(), torch.randn(2, FRAMES, 4, 6, 8), torch.tensor([0.5, 30.0])
    with torch.no_grad():
        before = FrozenUNetEncoder(unet, "before_downsample")(x, sigma, cond)
        after = FrozenUNetEncoder(unet)(x, sigma, cond)
    assert [tuple(f.shape[-2:]) for f in after] == [(3, 4), (2, 2), (1, 1), (1, 1)]
    assert [tuple(f.shape[-2:]) for f in before] == [(6, 8), (3, 4), (2, 2), (1, 1)]
    assert torch.allclose(before[-1], after[-1])  # the last block has no downsampler
    with pytest.raises(ValueError, match="before_downsample"):
        FrozenUNetEncoder(unet, "mid")


@pytest.mark.parametrize("kind,count", [("both", 8), ("spatial", 4), ("temporal", 4)])
def test_head_ablations(kind, count):
    encoder = FrozenUNetEncoder(build_random_model(TINY).unet)
    heads = DiscriminatorHeads(encoder.channels, 32, width=32, cond_width=32, kind=kind)
    cond, sigma = tiny_cond(), torch.tensor([0.3, 2.0])
    logits = heads(encoder(torch.randn(2, FRAMES, 4, 6, 8), sigma, cond), sigma, cond)
    assert len(logits) == count
    if kind == "temporal":
        assert logits[0].shape == (2 * 3 * 4, FRAMES)  # (B*H*W, T) after the first down block


def test_one_step_trains_generator_and_heads_only(videos, tmp_path):
    trainer = Trainer(tiny_config(videos, tmp_path, "gradient_accumulation=1", "r1_mode=exact"))
    trainer.setup_data()
    encoder_before = {k: v.clone() for k, v in trainer.encoder.state_dict().items()}
    generator_before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    latents, cond, _ = trainer.next_inputs()
    assert trainer.r1_due()  # step 0: R1 included
    trainer.accumulate(latents, cond, sync=True)
    # Cross-attention to ONE image token: softmax over one key is constant, so the query path
    # (norm2 -> attn2.to_q) has a zero gradient in exact arithmetic (float noise at best).
    query_path = lambda name: ".norm2." in name or ".attn2.to_q." in name
    missing = [n for n, p in trainer.generator.named_parameters() if (p.grad is None or not p.grad.abs().sum() > 0) and not query_path(n)]
    assert not missing, missing[:5]
    assert all(p.grad is not None for p in trainer.heads.parameters())
    assert all(not p.requires_grad and p.grad is None for p in trainer.encoder.parameters())
    trainer.optimizer_step()
    assert all(torch.equal(v, encoder_before[k]) for k, v in trainer.encoder.state_dict().items())
    assert any(not torch.equal(v, generator_before[k]) for k, v in trainer.generator.state_dict().items())


def test_r1_has_a_gradient_with_respect_to_the_real_input(videos, tmp_path):
    trainer = Trainer(tiny_config(videos, tmp_path, "r1_mode=exact"))
    cond = tiny_cond()
    real = torch.randn(2, FRAMES, 4, 6, 8, requires_grad=True)
    sigma = torch.tensor([0.4, 1.5])
    with trainer._math_attention():
        r1 = r1_penalty(trainer.discriminate(real, sigma, cond), real)
        (grad,) = torch.autograd.grad(r1, real)
        loss, parts, real_input = trainer.discriminator_loss(real.detach(), cond, real.detach(), sigma, with_r1=True)
        (head_grad,) = torch.autograd.grad(loss, trainer.heads.spatial[0].features[0].weight)
    assert r1.item() > 0 and grad.abs().sum() > 0 and parts["r1"] > 0 and real_input.requires_grad
    assert head_grad.abs().sum() > 0


def test_approximate_r1_is_the_directional_derivative(videos, tmp_path):
    """(D(x + delta*n) - D(x)) / delta -> grad D . n, whose square has mean ||grad D||^2 (the exact R1)."""
    trainer = Trainer(tiny_config(videos, tmp_path))
    cond, sigma = tiny_cond(), torch.tensor([0.4, 1.5])
    real = torch.randn(2, FRAMES, 4, 6, 8, requires_grad=True)
    direction = torch.randn(2, FRAMES, 4, 6, 8)
    with trainer._math_attention():
        real_logits = trainer.discriminate(real, sigma, cond)
        score = per_clip_score(real_logits, 2)
        (grad,) = torch.autograd.grad(score.sum(), real)
    directional = (grad * direction).flatten(1).sum(1).pow(2).mean()
    with trainer._math_attention():  # the same kernels as the exact pass: only the input differs
        perturbed_logits = trainer.discriminate(real.detach() + 1e-4 * direction, sigma, cond)
    approximate = approximate_r1_penalty(real_logits, perturbed_logits, 1e-4, clips=2)
    assert torch.allclose(approximate, directional, rtol=0.1)
    loss, parts, _ = trainer.discriminator_loss(real.detach(), cond, real.detach(), sigma, with_r1=True)
    assert parts["r1"] > 0 and trainer.cfg.loss.r1_mode == "approximate"


def test_edm_diffusion_mode(videos, tmp_path):
    trainer = Trainer(tiny_config(videos, tmp_path, "loss.mode=edm_diffusion", "steps=1"))
    trainer.train()
    assert trainer.heads is None and trainer.progress.step == 1
    assert "loss_edm" in (tmp_path / "loss.csv").read_text()


# ---- resume, atomic checkpoints, export ---------------------------------------------------


def run_state(trainer):
    return {
        "g": {k: v.clone() for k, v in trainer.generator.state_dict().items()},
        "heads": {k: v.clone() for k, v in trainer.heads.state_dict().items()},
        "ema": [s.clone() for s in trainer.ema.shadow],
        "losses": [line.split(",")[:-2] for line in (Path(trainer.cfg.run.output_dir) / "loss.csv").read_text().splitlines()],
    }


def test_resume_continues_the_exact_same_run(videos, tmp_path):
    straight = Trainer(tiny_config(videos, tmp_path / "a", "steps=4"))
    straight.train()
    Trainer(tiny_config(videos, tmp_path / "b", "steps=2")).train()
    resumed = Trainer(tiny_config(videos, tmp_path / "b", "steps=4"))
    resumed.train()
    a, b = run_state(straight), run_state(resumed)
    assert len(a["losses"]) == 5 and a["losses"] == b["losses"]  # header + 4 steps, minus timing columns
    assert all(torch.equal(a["g"][k], b["g"][k]) for k in a["g"])
    assert all(torch.equal(a["heads"][k], b["heads"][k]) for k in a["heads"])
    assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"]))


def test_killed_checkpoint_write_keeps_the_previous_one(videos, tmp_path, monkeypatch):
    settings = ("checkpoint_every=1", "gradient_accumulation=1")
    Trainer(tiny_config(videos, tmp_path, "steps=1", *settings)).train()
    assert checkpointing.latest_checkpoint(tmp_path).name == "step-00000001"

    import accelerate.checkpointing

    real_save = accelerate.checkpointing.save

    def dies_mid_write(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # a torn file, then the "kill"
        raise KeyboardInterrupt("killed while writing the checkpoint")

    monkeypatch.setattr(accelerate.checkpointing, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(videos, tmp_path, "steps=2", *settings)).train()
    monkeypatch.undo()
    assert checkpointing.latest_checkpoint(tmp_path).name == "step-00000001"
    assert list((tmp_path / "checkpoints").glob(".tmp-*"))  # the torn write stayed out of the way

    trainer = Trainer(tiny_config(videos, tmp_path, "steps=2", *settings))
    assert trainer.resume() and trainer.progress.step == 1
    trainer.train()
    assert checkpointing.latest_checkpoint(tmp_path).name == "step-00000002"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_export_loads_through_the_inference_path(videos, tmp_path):
    trainer = Trainer(tiny_config(videos, tmp_path, "steps=1", "export_single_file=true", "preview_every=1"))
    trainer.train()
    with Image.open(tmp_path / "previews" / "step-00000001.webp") as preview:
        assert preview.n_frames == FRAMES and preview.size == (WIDTH, HEIGHT)
    unet_file, single_file = trainer.export()
    assert (unet_file.name, single_file.name) == (UNET_FILE, SINGLE_FILE)
    with trainer.ema.swapped_in():
        ema = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    loaded = checkpoints.load_sfv_unet(unet_file, build_random_model(TINY))
    assert all(torch.equal(v, ema[k]) for k, v in loaded.unet.state_dict().items())
    full = checkpoints.load_model(single_file)  # the strict single-file loader
    assert all(torch.equal(v, ema[k]) for k, v in full.unet.state_dict().items())
    latents = sample(loaded.unet, tiny_cond(clips=1), seeded_generator(0))
    assert latents.shape == (1, FRAMES, 4, 6, 8) and torch.isfinite(latents).all()


def test_latent_cache_prepass_then_training(videos, tmp_path):
    cache = tmp_path / "cache"
    cfg = tiny_config(videos, tmp_path / "run", f"data.latent_cache={cache}", "steps=1", "cache_shard_size=2", "gradient_accumulation=1")
    trainer = Trainer(cfg)
    trainer.train()
    assert (cache / "index.json").is_file() and len(list(cache.glob("shard-*.safetensors"))) == 2  # 4 clips
    assert len(trainer.stream.dataset) == 4 and trainer.progress.step == 1
    assert next(trainer.model.image_encoder.parameters()).device.type == "cpu"
    # Row 0 is the first source's clip, encoded as on-the-fly training would encode it.
    clip = VideoClipDataset(trainer._sources(), FRAMES, 7.0, WIDTH, HEIGHT, seed=0).read_clip(trainer._sources()[0], item_rng(0, 0, 0).random())
    latents, cond = encode_clips(trainer.model, clip[None], cfg.data, torch.Generator())
    cached = trainer.stream.dataset[(0, 0)]
    assert torch.allclose(cached["latents"], latents[0], atol=2e-3) and torch.equal(cached["image_embeds"], cond.image_embeds[0])
    with pytest.raises(InputError, match="latent cache"):  # a cache built with other settings is refused
        Trainer(tiny_config(videos, tmp_path / "run2", f"data.latent_cache={cache}", "num_frames=3")).setup_data()


# ---- config and command line --------------------------------------------------------------


def test_config_file_holds_the_documented_defaults():
    shipped = load_config(REPO / "configs" / "train_sfv.yaml").to_dict()
    defaults = TrainConfig().to_dict()
    shipped["model"]["path"] = shipped["data"]["path"] = ""
    assert shipped == defaults
    assert defaults["optim"]["lr_generator"] == 1e-5 and defaults["optim"]["ema_decay"] == 0.95
    assert defaults["loss"]["reconstruction_weight"] == 0.1 and defaults["loss"]["disc_p_mean"] == -1.0


def test_overrides_and_errors():
    cfg = load_config(None, ["steps=10", "optim.lr_generator=2e-5", "mixed_precision=fp32", "frame_folder_fps=null"])
    assert (cfg.run.steps, cfg.optim.lr_generator, cfg.run.mixed_precision, cfg.data.frame_folder_fps) == (10, 2e-5, "fp32", None)
    for bad in (["nosuch=1"], ["run.nosuch=1"], ["nosuch.steps=1"], ["steps=ten"], ["path=x"]):  # path: in model and data
        with pytest.raises(InputError):
            load_config(None, bad)


def test_help_lists_every_field():
    text = help_text()
    for section, section_type in sections().items():
        for name in section_type.__dataclass_fields__:
            assert f"{section}.{name} (" in text


def test_cli_help_and_print_config(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--set", "steps=7", "--print-config"])
    run_train(args)
    assert yaml.safe_load(capsys.readouterr().out)["run"]["steps"] == 7
    from sfv_core.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "loss.r1_interval" in out and "--set" in out


def test_cli_trains_then_exports(videos, tmp_path, capsys):
    from sfv_core.cli import main

    sets = [arg for pair in tiny_config_sets(videos, tmp_path, "steps=1", "gradient_accumulation=1") for arg in ("--set", pair)]
    assert main(["train", *sets]) == 0
    assert (tmp_path / "export" / UNET_FILE).is_file()
    (tmp_path / "export" / UNET_FILE).unlink()
    assert main(["train", *sets, "--export-only"]) == 0
    assert str(tmp_path / "export" / UNET_FILE) in capsys.readouterr().out
    assert main(["train", "--set", "run.mixed_precision=fp64"]) == 2  # a config error is a message, not a traceback


# ---- a run folder is data, never code -----------------------------------------------------


class RunsCode:
    """A pickle that, when unpickled, creates the folder `marker` (stands for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant(folder: Path, name: str, marker: Path, forge_manifest: bool) -> None:
    """Drop a code-running pickle into a checkpoint; with `forge_manifest` also make the checksums agree."""
    import pickle

    (folder / name).write_bytes(pickle.dumps(RunsCode(marker)))
    if forge_manifest:
        checkpointing.write_manifest(folder)


@pytest.mark.parametrize("name, forged", [
    ("custom_checkpoint_0.pkl", False),  # what accelerate would unpickle with weights_only=False
    ("custom_checkpoint_0.pkl", True),
    ("optimizer.bin", True),
    ("random_states_0.pkl", True),
    ("trainer_state.json", False),
])
@pytest.mark.parametrize("export_only", [False, True])
def test_a_pickle_planted_in_a_run_folder_never_runs(videos, tmp_path, capsys, name, forged, export_only):
    from sfv_core.cli import main

    sets = [a for pair in tiny_config_sets(videos, tmp_path, "steps=2", "checkpoint_every=1", "gradient_accumulation=1") for a in ("--set", pair)]
    assert main(["train", *sets]) == 0
    marker = tmp_path / "code-ran"
    plant(tmp_path / "checkpoints" / "step-00000002", name, marker, forged)
    capsys.readouterr()
    code = main(["train", *sets, "--set", "run.steps=3", *(["--export-only"] if export_only else [])])
    assert not marker.exists()
    err = capsys.readouterr().err
    if forged:  # checksums agree: the loader itself must refuse, with one line
        assert code == 2 and "step-00000002" in err and "Traceback" not in err
    else:  # a file the manifest does not vouch for: fall back to step 1, which is intact
        assert code == 0


def test_a_damaged_or_missing_latest_falls_back_to_the_previous_checkpoint(videos, tmp_path, caplog):
    settings = ("checkpoint_every=1", "gradient_accumulation=1")
    Trainer(tiny_config(videos, tmp_path, "steps=3", *settings)).train()
    root = tmp_path / "checkpoints"
    rng = root / "step-00000003" / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[:-7] + b"garbage")  # same size, different bytes
    import shutil

    shutil.rmtree(root / "step-00000002")
    caplog.set_level("WARNING")
    trainer = Trainer(tiny_config(videos, tmp_path, "steps=3", *settings))
    assert trainer.resume() and trainer.progress.step == 1
    assert "random_states_0.pkl is damaged" in caplog.text
    (root / "step-00000001" / "model.safetensors").unlink()  # nothing complete left: refuse, never restart at 0
    with pytest.raises(CheckpointError, match="no complete checkpoint.*step-00000001: model.safetensors is missing"):
        Trainer(tiny_config(videos, tmp_path, "steps=3", *settings)).resume()


def test_a_half_written_checkpoint_is_removed_at_the_next_start_with_a_note(videos, tmp_path, caplog):
    stale = tmp_path / "checkpoints" / ".tmp-step-00000009"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"x" * 100)
    caplog.set_level("WARNING")
    Trainer(tiny_config(videos, tmp_path, "steps=1", "gradient_accumulation=1")).train()
    assert not stale.exists() and "half-written" in caplog.text


# ---- trainer faults, by class ---------------------------------------------------------------


@pytest.mark.parametrize("file, out", [("run", "run"), ("parent", "parent/run")])
def test_an_output_folder_that_is_a_file_is_one_message(videos, tmp_path, file, out):
    (tmp_path / file).write_text("a file")
    with pytest.raises(OutputError, match=f"{file} is a file, not a folder"):
        Trainer(tiny_config(videos, tmp_path / out, "steps=1")).train()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_full_disk_during_a_checkpoint_removes_the_half_written_folder(videos, tmp_path, monkeypatch, error):
    import accelerate.checkpointing

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(accelerate.checkpointing, "save", full)
    with pytest.raises(OutputError, match="writing the checkpoint of step 1 .* previous checkpoint is intact"):
        Trainer(tiny_config(videos, tmp_path, "steps=1", "gradient_accumulation=1")).train()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("content", ["", "bytes", "unreadable"])
def test_training_data_with_no_usable_video_says_so(tmp_path, content):
    data = tmp_path / "data"
    data.mkdir()
    if content == "bytes":
        (data / "clip.mp4").write_bytes(os.urandom(2000))
    elif content == "unreadable":
        (data / "frames").mkdir()
        (data / "frames" / "0.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="holds no usable training video"):
        Trainer(tiny_config(data, tmp_path / "run", "steps=1")).train()


@pytest.mark.parametrize("workers", [0, 1])
def test_the_only_source_failing_mid_run_is_one_message(tmp_path, workers):
    data = tmp_path / "data"
    data.mkdir()
    write_video(data / "only.mp4", 20)
    trainer = Trainer(tiny_config(data, tmp_path / "run", "steps=2", f"num_workers={workers}", "gradient_accumulation=1"))
    trainer.setup_data()
    (data / "only.mp4").write_bytes(b"gone bad")  # after the scan: fails when read
    with pytest.raises(InputError) as caught:
        trainer.train_step()
    message = str(caught.value)
    assert message.startswith("no data source can be decoded any more") and "Traceback" not in message


def damage_first_shard(cache: Path) -> str:
    shard = sorted(cache.glob("shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:50])
    return shard.name


def test_a_damaged_latent_cache_shard_is_skipped_and_named(videos, tmp_path, caplog):
    from sfv_core.train.encoding import LatentCacheDataset

    cache = tmp_path / "cache"
    cfg = tiny_config(videos, tmp_path / "run", f"data.latent_cache={cache}", "steps=1", "cache_shard_size=2", "gradient_accumulation=1")
    Trainer(cfg).setup_data()
    name = damage_first_shard(cache)
    caplog.set_level("WARNING")
    assert len(LatentCacheDataset(cache, cfg.data)) == 2  # 4 clips, the damaged shard's 2 left out
    assert name in caplog.text and "skipping damaged shard" in caplog.text
    sorted(cache.glob("shard-*.safetensors"))[1].write_bytes(b"")
    with pytest.raises(InputError, match="every shard of the latent cache .* is damaged or missing: delete"):
        LatentCacheDataset(cache, cfg.data)
    (cache / "index.json").write_text("{not json")
    with pytest.raises(InputError, match="index.json is damaged"):
        LatentCacheDataset(cache, cfg.data)


def test_train_without_the_extras_names_the_install_command(monkeypatch, capsys):
    import builtins

    from sfv_core.cli import main

    real_import = builtins.__import__

    def without_accelerate(name, *args, **kwargs):
        if name == "accelerate" or name.startswith("accelerate."):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_accelerate)
    assert main(["train", "--set", "model.path=tiny-random", "--set", "data.path=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: the trainer needs accelerate, which is not installed: pip install -r requirements.txt -r requirements-train.txt"
