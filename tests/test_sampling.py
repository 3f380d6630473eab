import math

import pytest
import torch

from sfv_core import sampling
from sfv_core.errors import InputError


def test_sfv_levels_are_the_4_level_karras_schedule():
    levels = sampling.SFV_SCHEDULE
    assert levels[0] == 700.0 and levels[-1] == 0.002
    assert levels[1] == pytest.approx(70.54, abs=0.005)
    assert levels[2] == pytest.approx(2.27, abs=0.01)
    assert sampling.SFV_TRAINING_LEVELS == levels[:3]


@pytest.mark.parametrize("denoise, sigma", [(1.0, 700.0), (2 / 3, sampling.SFV_SCHEDULE[1]), (1 / 3, sampling.SFV_SCHEDULE[2])])
def test_denoise_fractions_land_on_the_training_levels(denoise, sigma):
    assert sampling.sigma_for_denoise(denoise) == pytest.approx(sigma, rel=1e-9)


def test_sampling_levels_and_bad_step_counts():
    assert sampling.sampling_levels(1) == [700.0]
    assert sampling.sampling_levels(3) == list(sampling.SFV_SCHEDULE[:3])
    assert sampling.sampling_levels(2, 70.0) == [70.0, sampling.SFV_SCHEDULE[2]]
    for bad in (0, 5):
        with pytest.raises(InputError, match="steps must be between 1 and 4"):
            sampling.sampling_levels(bad)
    with pytest.raises(InputError, match="denoise must be in"):
        sampling.sigma_for_denoise(0.0)


def test_noise_is_comfyui_noise_and_leaves_global_rng_alone():
    shape = (2, 3, 4, 5, 6)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    ours = sampling.draw_noise(shape, sampling.seeded_generator(42))
    assert torch.equal(torch.random.get_rng_state(), before)
    # ComfyUI's prepare_noise: torch.manual_seed(seed); torch.randn(latent.size(), generator=..., device="cpu")
    comfy_generator = torch.manual_seed(42)
    comfy = torch.randn((6, 4, 5, 6), dtype=torch.float32, generator=comfy_generator, device="cpu")
    assert torch.equal(ours.reshape(6, 4, 5, 6), comfy)


class RecordingUNet(torch.nn.Module):
    """Stands in for F: returns a fixed function of its input and records what it saw."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False):
        self.calls.append((sample.clone(), timestep.clone()))
        return (sample[:, :, :4] * 0.5 * self.weight,)


def _cond(clips=1, frames=2):
    return sampling.Conditioning(torch.zeros(clips, 1, 8), torch.full((clips, 4, 3, 3), 0.25), torch.zeros(clips, 3), frames)


def test_one_step_is_the_edm_equation():
    unet = RecordingUNet()
    cond = _cond()
    x0 = sampling.sample(unet, cond, sampling.seeded_generator(7))
    eps = sampling.draw_noise(cond.latent_shape, sampling.seeded_generator(7))
    sigma = 700.0
    x = eps * math.sqrt(sigma**2 + 1)
    c_in, c_skip, c_out = 1 / math.sqrt(sigma**2 + 1), 1 / (sigma**2 + 1), -sigma / math.sqrt(sigma**2 + 1)
    sample_seen, timestep_seen = unet.calls[0]
    assert torch.allclose(sample_seen[:, :, :4], eps, atol=1e-5)  # c_in * x = eps
    assert torch.allclose(sample_seen[:, :, 4:], torch.full_like(eps, 0.25))  # image latent on every frame
    assert timestep_seen.item() == pytest.approx(0.25 * math.log(sigma))
    expected = c_skip * x + c_out * (c_in * x * 0.5)
    assert torch.allclose(x0, expected, atol=1e-5)


def test_multi_step_and_partial_denoise_visit_the_right_levels():
    unet = RecordingUNet()
    sampling.sample(unet, _cond(), sampling.seeded_generator(0), steps=3)
    assert [c[1].item() for c in unet.calls] == pytest.approx([0.25 * math.log(s) for s in sampling.SFV_SCHEDULE[:3]])

    unet = RecordingUNet()
    cond = _cond()
    init = torch.randn(cond.latent_shape)
    sampling.sample(unet, cond, sampling.seeded_generator(0), steps=1, init_latent=init, denoise_strength=1 / 3)
    sigma = sampling.SFV_SCHEDULE[2]
    eps = sampling.draw_noise(cond.latent_shape, sampling.seeded_generator(0))
    c_in = 1 / math.sqrt(sigma**2 + 1)
    assert torch.allclose(unet.calls[0][0][:, :, :4], c_in * (init + sigma * eps), atol=1e-6)


def test_partial_denoise_errors_name_the_fix():
    with pytest.raises(InputError, match="needs a latent clip"):
        sampling.sample(RecordingUNet(), _cond(), sampling.seeded_generator(0), denoise_strength=0.5)
    with pytest.raises(InputError, match="same frame count and size"):
        sampling.sample(RecordingUNet(), _cond(), sampling.seeded_generator(0), init_latent=torch.zeros(1, 5, 4, 3, 3))


def test_docs_quote_the_second_level_as_computed():
    """The level is written one way everywhere a user reads it (it was 70.6 in some places, 70.5 in others)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    quoted = f"{sampling.SFV_SCHEDULE[1]:.2f}"
    texts = [root / "README.md", *(root / "nodes").glob("*.py"), *(root / "workflows").rglob("*.json"), *(root / "sfv_core").rglob("*.py")]
    found = {(path.name, number) for path in texts for number in re.findall(r"(?<![\d.])70\.\d+", path.read_text())}
    assert found and {number for _, number in found} <= {quoted, f"{sampling.SFV_SCHEDULE[1]!r}"}, sorted(found)
