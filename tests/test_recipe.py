"""SF-V's recipe: the paper's reconstruction form, head reduction, R1 precision, refused combinations."""

import math

import pytest
import torch

from sfv_core.errors import InputError
from sfv_core.train.config import load_config
from sfv_core.train.losses import (
    hinge_discriminator,
    hinge_generator,
    pseudo_huber_per_clip,
    pseudo_huber_per_element,
    reconstruction_loss,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_paper_form_is_one_pseudo_huber_per_clip():
    """Two clips of d = 144 elements, errors 1 and 0.5 everywhere: ||e|| = 12 and 6."""
    target = torch.zeros(2, 4, 4, 3, 3)
    prediction = torch.stack([torch.ones(4, 4, 3, 3), torch.full((4, 4, 3, 3), 0.5)])
    c = 0.00054 * math.sqrt(144)
    by_hand = ((math.sqrt(144 + c * c) - c) + (math.sqrt(36 + c * c) - c)) / 2
    assert pseudo_huber_per_clip(prediction, target).item() == pytest.approx(by_hand, rel=1e-6)
    assert reconstruction_loss(prediction, target, "paper", 0.03).item() == pytest.approx(by_hand, rel=1e-6)
    per_element = ((math.sqrt(1 + 0.03**2) - 0.03) + (math.sqrt(0.25 + 0.03**2) - 0.03)) / 2
    assert reconstruction_loss(prediction, target, "per_element", 0.03).item() == pytest.approx(per_element, rel=1e-6)


def gradient_norm(loss_fn, error: torch.Tensor) -> float:
    prediction = error.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(prediction, torch.zeros_like(error)), prediction)
    return grad.norm().item()


@pytest.mark.parametrize("shape", [(1, 8, 4, 8, 8), (1, 14, 4, 16, 24)])  # the miniature's clip; a larger one
def test_paper_form_gradient_is_sqrt_d_stronger_than_per_element(shape):
    error = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    d = error[0].numel()
    ratio = gradient_norm(pseudo_huber_per_clip, error) / gradient_norm(lambda a, b: pseudo_huber_per_element(a, b, 0.03), error)
    assert ratio == pytest.approx(math.sqrt(d), rel=0.1), (ratio, math.sqrt(d))


def test_head_reduction_sum_is_the_head_count_times_the_mean():
    generator = torch.Generator().manual_seed(2)
    real = [torch.randn(6, 3, generator=generator) for _ in range(8)]
    fake = [torch.randn(6, 3, generator=generator) for _ in range(8)]
    assert hinge_generator(fake, "sum").item() == pytest.approx(8 * hinge_generator(fake, "mean").item(), rel=1e-6)
    assert hinge_discriminator(real, fake, "sum").item() == pytest.approx(8 * hinge_discriminator(real, fake).item(), rel=1e-6)


BASE = ["model.path=tiny-random", "data.path=videos"]


def test_paper_recipe_is_the_default():
    cfg = load_config(None, BASE).validate()
    assert (cfg.loss.reconstruction_form, cfg.loss.head_reduction, cfg.loss.reconstruction_weight) == ("paper", "mean", 0.1)
    assert load_config(None, BASE + ["reconstruction_form=per_element", "huber_c=0.01"]).validate().loss.huber_c == 0.01


@pytest.mark.parametrize("overrides,named", [
    (["huber_c=0.01"], "huber_c"),  # paper form: c comes from d
    (["mixed_precision=fp16"], "fp16"),  # two optimisers, one GradScaler
    (["loss.mode=edm_diffusion", "head_reduction=sum"], "head_reduction"),  # no adversarial term there
    (["reconstruction_form=l2"], "reconstruction_form"),
])
def test_contradicting_recipe_options_are_one_line_before_any_model_loads(overrides, named):
    with pytest.raises(InputError) as error:
        load_config(None, BASE + overrides).validate()  # Trainer() validates first thing
    message = str(error.value)
    assert named in message and "\n" not in message
    assert load_config(None, BASE + ["loss.mode=edm_diffusion", "mixed_precision=fp16"]).validate()  # fp16 fine without G-vs-D


# ---- approximate R1 against exact R1, in the precisions users run -------------------------

FRAMES = 4


def tiny_trainer(tmp_path, *overrides):
    from accelerate.state import AcceleratorState

    from sfv_core.train.trainer import Trainer

    AcceleratorState._reset_state()  # a process-wide singleton: its precision is fixed by the first Accelerator

    sets = ["model.path=tiny-random", f"data.path={tmp_path}", f"run.output_dir={tmp_path}", f"num_frames={FRAMES}", "width=64", "height=48",
            "num_workers=0", "head_channels=32", "cond_channels=32", "preview_every=0", *overrides]
    return Trainer(load_config(None, sets))


def tiny_cond(clips=2):
    from sfv_core.sampling import Conditioning

    generator = torch.Generator().manual_seed(1)
    return Conditioning(torch.randn(clips, 1, 32, generator=generator), torch.randn(clips, 4, 6, 8, generator=generator), torch.tensor([[6.0, 127.0, 0.02]] * clips), FRAMES)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_approximate_r1_matches_exact_r1_in_each_precision(tmp_path, precision):
    """The trainer's estimate, summed over 8 fixed directions n, against autograd's sum of
    (grad D . n)^2 in fp32 (whose mean over n is the exact R1). delta = 1e-4 puts the finite
    difference in its small-delta regime (the tiny random D is far from linear at 1e-2); there
    the old bf16 passes were 10^4x high (measured), the fp32 passes 0.99x."""
    from sfv_core.train.losses import approximate_r1_penalty, per_clip_score

    trainer = tiny_trainer(tmp_path, f"mixed_precision={precision}", "r1_delta=1e-4")
    assert trainer.encoder.conv_in.weight.dtype == torch.float32  # the R1 passes need fp32 weights
    cond, sigma = tiny_cond(), torch.tensor([0.4, 1.5])
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(2, FRAMES, 4, 6, 8, generator=generator).requires_grad_(True)
    with trainer._math_attention():
        (grad,) = torch.autograd.grad(per_clip_score(trainer.discriminate(real, sigma, cond), 2).sum(), real)
    exact = estimate = 0.0
    for _ in range(8):
        direction = torch.randn(real.shape, generator=generator)
        exact += (grad * direction).flatten(1).sum(1).pow(2).mean().item()
        with trainer.accelerator.autocast(), trainer.full_precision():  # as discriminator_loss runs it
            real_logits = trainer.discriminate(real.detach(), sigma, cond)
        with trainer.accelerator.autocast():
            estimate += approximate_r1_penalty(real_logits, trainer.perturbed_logits(real, sigma, cond, direction), 1e-4, 2).item()
    assert 0.9 < estimate / exact < 1.1, estimate / exact


# ---- diagnostics -----------------------------------------------------------------------------


def test_accuracy_is_per_clip_and_split_by_the_generators_level():
    from sfv_core.train.diagnostics import accuracy_parts, finish_accuracies

    sigma = torch.tensor([700.0, 70.54, 700.0])
    real = [torch.tensor([[1.0, 1.0], [-3.0, 1.0], [0.5, 0.5]])]  # per-clip means 1, -1, 0.5: 2 of 3 right
    fake = [torch.tensor([[-1.0, -1.0], [2.0, 0.0], [-0.5, 0.1]])]  # means -1, 1, -0.2: right, wrong, right
    parts = accuracy_parts(real, fake, sigma, [700.0, 70.54, 2.27])
    # Two micro-batches of the same numbers, as train_step averages them: the ratios do not change.
    totals = {k: 2 * v / 2 for k, v in parts.items()}
    done = finish_accuracies(totals)
    assert done["d_acc_real"] == pytest.approx(2 / 3) and done["d_acc_fake"] == pytest.approx(2 / 3)
    assert done["d_acc_fake@700"] == 1.0 and done["d_acc_fake@70.54"] == 0.0 and math.isnan(done["d_acc_fake@2.27"])
    assert not any(k.startswith("d_right") or k.startswith("d_clips") for k in done)


def test_gradient_probe_separates_two_terms_in_one_backward():
    from sfv_core.train.diagnostics import GradientProbe

    x = torch.randn(5, 3, requires_grad=True)
    probe = GradientProbe()
    loss = 3 * probe.watch("a", x).sum() + probe.watch("b", x).pow(2).sum() / 2
    loss.backward()
    assert probe.norms["a"] == pytest.approx(3 * math.sqrt(15), rel=1e-6)
    assert probe.norms["b"] == pytest.approx(x.detach().norm().item(), rel=1e-6)
    assert torch.allclose(x.grad, 3 + x.detach())  # the views change nothing in the gradient


def generator_gradients(trainer, latents, cond, noise_state):
    trainer.generator.zero_grad(set_to_none=True)
    trainer.progress.noise.set_state(noise_state)
    parts = trainer.accumulate(latents, cond, sync=True)
    return {n: p.grad.clone() for n, p in trainer.generator.named_parameters() if p.grad is not None}, parts


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_adversarial_off_leaves_the_generator_to_the_reconstruction_term(tmp_path, weight):
    """adversarial_weight 0 (the control): G's gradient does not depend on the heads at all,
    and the logged gradient ratio at x0 reads 0; with weight 1 both differ."""
    trainer = tiny_trainer(tmp_path, "mixed_precision=fp32", f"adversarial_weight={weight}", "gradient_accumulation=1", "r1_weight=0")
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(2, FRAMES, 4, 6, 8, generator=generator)
    state = trainer.progress.noise.get_state()
    before, parts = generator_gradients(trainer, latents, tiny_cond(), state)
    with torch.no_grad():
        for p in trainer.heads.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    after, _ = generator_gradients(trainer, latents, tiny_cond(), state)
    same = all(torch.equal(before[n], after[n]) for n in before)
    ratio = parts["grad_x0_adversarial_over_reconstruction"]
    assert {"d_acc_real", "d_acc_fake"} <= set(parts)
    if weight == 0:
        assert same and ratio == 0.0
    else:
        assert not same and 0 < ratio < math.inf


# ---- the discriminator can learn -------------------------------------------------------------


def auc(real: torch.Tensor, fake: torch.Tensor) -> float:
    """P(score of a real clip > score of a generated one), ties half."""
    diff = real[:, None] - fake[None, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


def moving_and_frozen(clips: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Real: a random latent pattern sliding one latent pixel per frame; fake: its first frame frozen."""
    base = torch.randn(clips, 1, 4, 6, 8, generator=generator)
    real = torch.cat([torch.roll(base, shifts=t, dims=-1) for t in range(FRAMES)], dim=1)
    return real, base.expand(-1, FRAMES, -1, -1, -1).clone()


def test_heads_alone_learn_to_spot_frozen_frames():
    """The trainable heads on the frozen encoder of a random UNet, trained alone (the generator
    out of the loop) on obviously wrong fakes, reach a held-out AUC above 0.9 within seconds."""
    from sfv_core.models import TINY, build_random_model
    from sfv_core.sampling import Conditioning
    from sfv_core.train.discriminator import DiscriminatorHeads, FrozenUNetEncoder
    from sfv_core.train.losses import per_clip_score

    torch.manual_seed(0)
    encoder = FrozenUNetEncoder(build_random_model(TINY).unet)
    heads = DiscriminatorHeads(encoder.channels, 32, width=32, cond_width=32)
    optimiser = torch.optim.Adam(heads.parameters(), lr=1e-3, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(7)
    clips = 8

    def scores(x, sigma):
        cond = Conditioning(torch.zeros(clips, 1, 32), x[:, 0], torch.tensor([[6.0, 127.0, 0.02]] * clips), FRAMES)
        with torch.no_grad():
            features = encoder(x + sigma.reshape(-1, 1, 1, 1, 1) * torch.randn(x.shape, generator=generator), sigma, cond)
        return heads(features, sigma, cond)

    def held_out_auc():
        real, fake = moving_and_frozen(clips, generator)
        sigma = torch.full((clips,), 0.2)
        with torch.no_grad():
            return auc(per_clip_score(scores(real, sigma), clips), per_clip_score(scores(fake, sigma), clips))

    before = held_out_auc()
    for _ in range(30):
        real, fake = moving_and_frozen(clips, generator)
        sigma = torch.exp(-1.0 + 0.5 * torch.randn(clips, generator=generator))
        loss = hinge_discriminator(scores(real, sigma), scores(fake, sigma))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    after = held_out_auc()
    assert before < 0.75 and after > 0.9, (before, after)  # measured: 0.39 untrained, 1.0 after 30 steps


# ---- per-clip micro-conditioning -----------------------------------------------------------


def test_motion_bucket_mapping():
    from sfv_core.train.motion import motion_buckets

    still = torch.zeros(1, 4, 3, 8, 8)
    steps = torch.arange(4).float().reshape(1, 4, 1, 1, 1) * 0.1  # [-1,1] steps of 0.1 = 0.05 in [0,1] units
    flicker = torch.tensor([-1.0, 1.0, -1.0, 1.0]).reshape(1, 4, 1, 1, 1).expand(1, 4, 3, 8, 8)
    buckets = motion_buckets(torch.cat([still, steps.expand(1, 4, 3, 8, 8), flicker]), full_scale=0.1)
    assert buckets.tolist() == [0.0, 128.0, 255.0]  # 255 * 0.05 / 0.1 = 127.5 -> 128; saturates at 255


def test_sampled_augmentation_is_lognormal():
    from sfv_core.train.motion import sampled_augmentation

    values = sampled_augmentation(4000, -3.0, 0.5, torch.Generator().manual_seed(0))
    assert values.log().mean().item() == pytest.approx(-3.0, abs=0.05) and values.log().std().item() == pytest.approx(0.5, abs=0.03)


def test_per_clip_conditioning_reaches_the_time_ids_and_the_image_latent():
    from sfv_core.models import TINY, build_random_model
    from sfv_core.train.encoding import cache_settings, encode_clips

    model = build_random_model(TINY)
    moving = torch.linspace(-0.5, 0.5, FRAMES).reshape(1, FRAMES, 1, 1, 1).expand(1, FRAMES, 3, 48, 64)
    frames = torch.cat([torch.zeros(1, FRAMES, 3, 48, 64), moving])
    fixed_cfg = load_config(None, BASE).data
    per_clip_cfg = load_config(None, BASE + ["conditioning=per_clip"]).validate().data
    _, fixed = encode_clips(model, frames, fixed_cfg, torch.Generator().manual_seed(1))
    _, varied = encode_clips(model, frames, per_clip_cfg, torch.Generator().manual_seed(1))
    assert fixed.added_time_ids.tolist() == [[6.0, 127.0, pytest.approx(0.02)]] * 2
    fps, motion, augmentation = varied.added_time_ids.T
    assert fps.tolist() == [6.0, 6.0] and motion[0] == 0 and motion[1] > 0
    assert (augmentation > 0).all() and augmentation[0] != augmentation[1]
    assert not torch.allclose(fixed.image_latent, varied.image_latent)  # the drawn augmentation is applied
    assert "conditioning" in cache_settings(per_clip_cfg) and "conditioning" not in cache_settings(fixed_cfg)  # old caches stay valid
    with pytest.raises(InputError, match="motion_bucket_id"):
        load_config(None, BASE + ["conditioning=per_clip", "motion_bucket_id=60"]).validate()


# ---- the CPU quick start ---------------------------------------------------------------------


def test_cpu_quick_start_config_is_cpu_sane_and_the_shipped_one_says_what_to_change():
    from pathlib import Path

    from sfv_core.train.config import cpu_advice

    repo = Path(__file__).resolve().parents[1]
    quick = load_config(repo / "configs" / "quickstart_cpu.yaml").validate()
    assert Path(repo / quick.model.path).is_file()  # the bundled toy model
    assert cpu_advice(quick) is None
    assert (quick.loss.reconstruction_form, quick.loss.mode) == ("paper", "sfv_adversarial")  # the paper's recipe, small
    advice = cpu_advice(load_config(repo / "configs" / "train_sfv.yaml"))
    for change in ("mixed_precision=fp32", "gradient_accumulation=1", "latent_cache", "gradient_checkpointing=false"):
        assert change in advice
    assert "\n" not in advice
