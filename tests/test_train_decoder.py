"""train-decoder on the CPU: a tiny random SVD's temporal decoder as the teacher, a tiny student,
a few steps on synthetic frame folders; resume, export, load, CLI."""

import pytest
import torch

from sfv_core import tiny_decoder
from sfv_core.cli import main
from sfv_core.errors import InputError
from sfv_core.train.config import load_config
from sfv_core.train.decoder import DECODER_FILE, DecoderTrainConfig, DecoderTrainer, scheduled_lr
from sfv_core.train.losses import decoder_distillation_losses


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    from sfv_core.toy import data as toy_data

    root = tmp_path_factory.mktemp("clips")
    toy_data.write_frame_folders(toy_data.generate_split("train", 4, 4, 64), root)
    return root


def config_sets(frames, out, *overrides) -> list[str]:
    return [
        "model.path=tiny-random", f"data.path={frames}", f"run.output_dir={out}", f"data.latent_cache={out}/cache",
        "num_frames=4", "width=64", "height=64", "num_workers=0", "batch_size=2", "mixed_precision=fp32",
        "decoder.widths=[8, 8, 8, 8]", "decoder.blocks=[1, 0, 0, 1]", "log_every=1", "checkpoint_every=1", "export_dtype=fp32", *overrides,
    ]


def config(frames, out, *overrides) -> DecoderTrainConfig:
    return load_config(None, config_sets(frames, out, *overrides), DecoderTrainConfig)


def test_losses_see_blur_and_flicker():
    teacher = torch.rand(1, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert all(value == 0 for value in decoder_distillation_losses(teacher, teacher).values())
    blurred = torch.nn.functional.avg_pool2d(teacher.flatten(0, 1), 3, 1, 1, count_include_pad=False).unflatten(0, (1, 4))
    flicker = teacher + torch.tensor([0.0, 0.1, 0.0, 0.1]).view(1, 4, 1, 1, 1)
    assert decoder_distillation_losses(blurred, teacher)["edge"] > 0.05
    parts = decoder_distillation_losses(flicker, teacher)
    assert parts["temporal"] == pytest.approx(0.1) and parts["edge"] < 1e-6


def test_trains_resumes_exactly_and_exports_a_loadable_decoder(frames, tmp_path):
    straight = DecoderTrainer(config(frames, tmp_path / "a", "steps=3"))
    straight.train()
    DecoderTrainer(config(frames, tmp_path / "b", "steps=2")).train()
    resumed = DecoderTrainer(config(frames, tmp_path / "b", "steps=3"))
    resumed.train()
    assert resumed.progress.step == 3
    # The shared loop's checkpoints: a checksum manifest, the progress as safetensors + JSON, nothing for accelerate to unpickle.
    saved = sorted(p.name for p in (tmp_path / "b" / "checkpoints" / "step-00000003").iterdir())
    assert "manifest.json" in saved and not any(name.startswith("custom_checkpoint") for name in saved), saved
    a, b = straight.accelerator.unwrap_model(straight.student).state_dict(), resumed.accelerator.unwrap_model(resumed.student).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)  # run.seed: the student's initial weights
    first = tiny_decoder.TinyDecoder(straight.cfg.decoder)
    assert all(v.shape == first.state_dict()[k].shape for k, v in a.items())
    assert any(not torch.equal(v, first.state_dict()[k]) for k, v in a.items())
    losses = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    assert losses[0].split(",")[:5] == ["step", "l1_edge", "l1_pixel", "l1_temporal", "loss"] and len(losses) == 4

    (path,) = resumed.export()
    assert path.name == DECODER_FILE
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:  # the teacher by name, not the trainer's folders
        assert handle.metadata()["teacher"] == "tiny-random" and handle.metadata()["steps"] == "3"
    loaded = tiny_decoder.load_tiny_decoder(path)
    assert loaded.config == tiny_decoder.TinyDecoderConfig(widths=(8, 8, 8, 8), blocks=(1, 0, 0, 1))
    assert all(torch.equal(loaded.state_dict()[k], b[k]) for k in b)
    tiny_decoder.check_fits(loaded, resumed.model.vae)


def test_the_export_is_the_ema_of_the_weights_and_resumes_with_it(frames, tmp_path):
    from safetensors.torch import load_file

    straight = DecoderTrainer(config(frames, tmp_path / "a", "steps=3", "optim.ema_decay=0.5"))
    straight.train()
    DecoderTrainer(config(frames, tmp_path / "b", "steps=2", "optim.ema_decay=0.5")).train()
    resumed = DecoderTrainer(config(frames, tmp_path / "b", "steps=3", "optim.ema_decay=0.5"))
    resumed.train()
    (a,), (b,) = straight.export(), resumed.export()
    exported, resumed_export = load_file(str(a)), load_file(str(b))
    live = straight.accelerator.unwrap_model(straight.student).state_dict()
    assert all(torch.equal(exported[k], resumed_export[k]) for k in exported)  # the average was checkpointed
    assert all(torch.equal(exported[k], s) for k, s in zip(live, straight.ema.shadow))
    assert any(not torch.equal(exported[k], live[k]) for k in live)  # an average, not the last step
    with pytest.raises(InputError, match="optim.ema_decay must be in"):
        DecoderTrainer(config(frames, tmp_path / "c", "optim.ema_decay=1"))


def test_cosine_schedule_decays_to_zero_and_an_interrupted_run_resumes_on_it(frames, tmp_path, monkeypatch):
    assert [scheduled_lr(1.0, "cosine", step, 4) for step in range(5)] == pytest.approx([1, 0.853553, 0.5, 0.146447, 0], abs=1e-6)
    assert scheduled_lr(3e-4, "constant", 7, 4) == 3e-4
    rates, step_once = [], DecoderTrainer.train_step

    def recorded(self):
        if self.progress.step == self.stop_at:
            raise KeyboardInterrupt  # as a user's Ctrl-C after the checkpoint of that step
        values = step_once(self)
        rates.append(self.optimizer.param_groups[0]["lr"])
        return values

    monkeypatch.setattr(DecoderTrainer, "train_step", recorded)
    sets = ("steps=3", "optim.lr_schedule=cosine", "optim.lr=1e-3")
    straight = DecoderTrainer(config(frames, tmp_path / "a", *sets))
    straight.stop_at = None
    straight.train()
    assert rates == pytest.approx([1e-3, 0.75e-3, 0.25e-3])
    interrupted = DecoderTrainer(config(frames, tmp_path / "b", *sets))
    interrupted.stop_at = 2
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    resumed = DecoderTrainer(config(frames, tmp_path / "b", *sets))
    resumed.stop_at = None
    rates.clear()
    resumed.train()
    assert rates == pytest.approx([0.25e-3])  # the rate of step 3 of 3, not of a fresh run's first step
    a, b = straight.accelerator.unwrap_model(straight.student).state_dict(), resumed.accelerator.unwrap_model(resumed.student).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="optim.lr_schedule must be one of constant, cosine, got 'linear'"):
        DecoderTrainer(config(frames, tmp_path / "c", "optim.lr_schedule=linear"))


def test_the_discriminator_judges_patches_and_resumes_exactly(frames, tmp_path):
    from sfv_core.train.decoder import PatchDiscriminator

    judge = PatchDiscriminator(latent_channels=4, upscale=8, width=8)
    logits = judge(torch.rand(2, 4, 3, 64, 64) * 2 - 1, torch.randn(2, 4, 4, 8, 8))
    assert logits.shape == (2, 1, 4, 8, 8)  # a logit per frame and 8x8 patch

    adversarial = ("loss.adversarial_weight=0.5", "loss.adversarial_start=1", "optim.discriminator_width=8")
    straight = DecoderTrainer(config(frames, tmp_path / "a", "steps=3", *adversarial))
    straight.train()
    DecoderTrainer(config(frames, tmp_path / "b", "steps=2", *adversarial)).train()
    resumed = DecoderTrainer(config(frames, tmp_path / "b", "steps=3", *adversarial))
    resumed.train()
    for name in ("student", "discriminator"):  # both networks and their optimisers were checkpointed
        a, b = (run.accelerator.unwrap_model(getattr(run, name)).state_dict() for run in (straight, resumed))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    torch.manual_seed(0)
    untrained = PatchDiscriminator(4, 8, 8).state_dict()
    trained = straight.accelerator.unwrap_model(straight.discriminator).state_dict()
    assert any(not torch.equal(trained[k], untrained[k]) for k in trained)
    rows = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    header, first, last = rows[0].split(","), rows[1].split(","), rows[-1].split(",")
    assert "d_hinge" in header and "g_hinge" in header
    assert first[header.index("d_hinge")] == "nan" and float(last[header.index("d_hinge")]) > 0  # it starts at adversarial_start
    with pytest.raises(InputError, match="loss.adversarial_start"):
        DecoderTrainer(config(frames, tmp_path / "c", "steps=3", "loss.adversarial_weight=0.5", "loss.adversarial_start=3"))


def test_cli_trains_exports_and_refuses_bad_settings(frames, tmp_path, capsys):
    sets = lambda *extra: [arg for pair in config_sets(frames, tmp_path, "steps=1", *extra) for arg in ("--set", pair)]
    assert main(["train-decoder", *sets()]) == 0
    assert str(tmp_path / "export" / DECODER_FILE) in capsys.readouterr().out
    assert main(["train-decoder", *sets("decoder.latent_channels=16")]) == 2
    assert "decodes 16-channel latents" in capsys.readouterr().err
    assert main(["train-decoder", *sets("run.preview_every=5")]) == 2
    assert "SF-V settings" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train-decoder", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "decoder.widths" in out and "loss.temporal_weight" in out and "loss.r1_interval" not in out


@pytest.fixture(scope="module")
def sfv_unet_file(tmp_path_factory):
    """An 'SF-V UNet' for the tiny-random base: the same architecture, other weights."""
    from sfv_core.checkpoints import save_unet_file
    from sfv_core.models import build_random_model

    return save_unet_file(build_random_model(seed=7).unet, tmp_path_factory.mktemp("sfv") / "sfv_unet.safetensors", layout="sgm")


def test_generated_latents_replace_the_drawn_share_with_sfv_samples(frames, sfv_unet_file, tmp_path):
    from safetensors.torch import load_file

    from sfv_core import sampling

    trainer = DecoderTrainer(config(frames, tmp_path, f"generated.sfv_unet={sfv_unet_file}", "generated.fraction=0.5", "batch_size=4"))
    # The SF-V weights are what samples, not the base's.
    some_key = "input_blocks.0.0.weight"
    assert torch.equal(trainer.sfv_unet.state_dict()["conv_in.weight"], load_file(str(sfv_unet_file))[some_key])
    trainer.setup_data()
    latents, cond, _ = trainer.next_inputs()
    state = trainer.progress.noise.get_state()
    mixed, count = trainer.with_generated(latents, cond)

    replay = torch.Generator().set_state(state)
    picked = torch.rand(len(latents), generator=replay) < 0.5
    assert count == int(picked.sum()) and 0 < count < len(latents)  # this seed draws a real mix
    assert torch.equal(mixed[~picked], latents[~picked])
    assert torch.equal(mixed[picked], sampling.sample(trainer.sfv_unet, cond.select(picked), replay, steps=1))

    trainer.cfg.run.steps = 2
    trainer.train()
    log = (tmp_path / "loss.csv").read_text().splitlines()
    column = log[0].split(",").index("generated_clips")
    assert all(0 <= float(row.split(",")[column]) <= 4 for row in log[1:])


def test_generated_settings_are_checked_before_the_model_loads(frames, sfv_unet_file, tmp_path, monkeypatch):
    from sfv_core.checkpoints import save_unet_file
    from sfv_core.errors import CheckpointError, InputError
    from sfv_core.models import TINY, SVDConfigs, build_random_model, unet_config
    from sfv_core.train import loop

    monkeypatch.setattr(loop, "load_base_model", lambda path: pytest.fail("loaded the model before checking the settings"))
    with pytest.raises(InputError, match="generated.fraction is a share"):
        DecoderTrainer(config(frames, tmp_path, f"generated.sfv_unet={sfv_unet_file}", "generated.fraction=1.5"))
    with pytest.raises(InputError, match="would load and never be used"):
        DecoderTrainer(config(frames, tmp_path, f"generated.sfv_unet={sfv_unet_file}", "generated.fraction=0"))
    wider = SVDConfigs(unet=unet_config(block_out_channels=(64, 64, 64, 64), layers_per_block=1, cross_attention_dim=32), vae=TINY.vae, image_encoder=TINY.image_encoder)
    other = save_unet_file(build_random_model(wider).unet, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="different architecture than the base model"):
        DecoderTrainer(config(frames, tmp_path, f"generated.sfv_unet={other}"))
    with pytest.raises((CheckpointError, InputError), match="missing.safetensors"):
        DecoderTrainer(config(frames, tmp_path, f"generated.sfv_unet={tmp_path / 'missing.safetensors'}"))
