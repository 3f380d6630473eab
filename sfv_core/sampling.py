"""EDM sampling of an SVD-family denoiser: v-prediction, sigma_data = 1.

    D(x; sigma) = c_skip * x + c_out * F(cat[c_in * x, z_img], c_noise, e_img, t_ids)

One step at sigma_max is all SF-V needs. Latents `x` here are in the model's space
(raw VAE latent x 0.18215), shaped (clips, frames, 4, h, w), and kept in float32: the
UNet runs in its own dtype, the skip connection does not lose precision.
The trainer calls the same `denoise` on the same UNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import InputError
from .models import VAE_SCALING_FACTOR

SIGMA_MIN = 0.002
SIGMA_MAX = 700.0
KARRAS_RHO = 7.0


def karras_sigmas(count: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = KARRAS_RHO) -> list[float]:
    """`count` noise levels from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho)."""
    if count == 1:
        return [sigma_max]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    inner = [(hi + i / (count - 1) * (lo - hi)) ** rho for i in range(1, count - 1)]
    return [sigma_max, *inner, sigma_min]


# SF-V's generator was trained on the first three levels of this 4-level schedule:
# 700, 70.54, 2.27 (the fourth, 0.002, leaves a clip as it is).
SFV_SCHEDULE = tuple(karras_sigmas(4))
SFV_TRAINING_LEVELS = SFV_SCHEDULE[:3]
MAX_STEPS = len(SFV_SCHEDULE)


def sigma_for_denoise(denoise: float) -> float:
    """Noise level at fraction `denoise` of the Karras curve: 1 -> 700, 2/3 -> 70.54, 1/3 -> 2.27."""
    if not 0.0 < denoise <= 1.0:
        raise InputError(f"denoise must be in (0, 1], got {denoise}: 1.0 generates from pure noise, smaller keeps more of the input clip.")
    lo, hi = SIGMA_MIN ** (1 / KARRAS_RHO), SIGMA_MAX ** (1 / KARRAS_RHO)
    return (lo + denoise * (hi - lo)) ** KARRAS_RHO


def sampling_levels(steps: int, start_sigma: float = SIGMA_MAX) -> list[float]:
    """The levels a `steps`-step run visits: `start_sigma`, then the schedule's levels below it."""
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}: SF-V is trained for 1 step and works up to {MAX_STEPS}.")
    below = [s for s in SFV_SCHEDULE if s < 0.99 * start_sigma]
    return [start_sigma] + below[: steps - 1]


@dataclass
class Conditioning:
    """What the denoiser is conditioned on, for `clips` start images.

    image_embeds: (clips, 1, D) CLIP image embedding of the clean start frame.
    image_latent: (clips, 4, h, w) raw VAE latent (mode) of the noise-augmented start frame.
    added_time_ids: (clips, 3) [fps - 1, motion_bucket_id, augmentation].
    """

    image_embeds: torch.Tensor
    image_latent: torch.Tensor
    added_time_ids: torch.Tensor
    num_frames: int

    @property
    def clips(self) -> int:
        return self.image_embeds.shape[0]

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        channels, height, width = self.image_latent.shape[1:]
        return (self.clips, self.num_frames, channels, height, width)

    def select(self, clips: torch.Tensor) -> "Conditioning":
        """The conditioning of some clips (an index or boolean mask over clips)."""
        return Conditioning(self.image_embeds[clips], self.image_latent[clips], self.added_time_ids[clips], self.num_frames)

    def to(self, device, dtype=None) -> "Conditioning":
        move = lambda t: t.to(device=device, dtype=dtype if dtype is not None else t.dtype)
        return Conditioning(move(self.image_embeds), move(self.image_latent), move(self.added_time_ids), self.num_frames)


def _per_clip(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
    return sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma


def unet_input(x: torch.Tensor, sigma: float | torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
    """What F sees for D(x; sigma): cat[c_in * x, z_img] on channels, and c_noise as its timestep.

    Also the input of the trainer's discriminator, which reads the UNet's features, not D(x).
    """
    sigma = _per_clip(sigma, x)
    c_in = 1 / torch.sqrt(sigma.reshape(-1, 1, 1, 1, 1) ** 2 + 1)
    c_noise = 0.25 * torch.log(sigma)
    image_latent = cond.image_latent.unsqueeze(1).expand(-1, x.shape[1], -1, -1, -1)
    return torch.cat([c_in * x, image_latent.to(x.dtype)], dim=2), c_noise


def denoise(unet: torch.nn.Module, x: torch.Tensor, sigma: float | torch.Tensor, cond: Conditioning) -> torch.Tensor:
    """D(x; sigma): the EDM-preconditioned denoiser's estimate of the clean latent x0.

    `sigma` is a number or a (clips,) tensor; x is (clips, frames, 4, h, w) in model space.
    """
    sigma = _per_clip(sigma, x)
    s = sigma.reshape(-1, 1, 1, 1, 1)
    c_skip = 1 / (s**2 + 1)
    c_out = -s / torch.sqrt(s**2 + 1)
    sample, c_noise = unet_input(x, sigma, cond)

    unet_dtype = next(unet.parameters()).dtype
    model_output = unet(
        sample.to(unet_dtype),
        c_noise,
        encoder_hidden_states=cond.image_embeds.to(unet_dtype),
        added_time_ids=cond.added_time_ids.to(unet_dtype),
        return_dict=False,
    )[0]
    return c_skip * x + c_out * model_output.to(x.dtype)


def draw_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise drawn as ComfyUI draws it: float32 on the CPU, frames in the batch.

    `shape` is (clips, frames, 4, h, w); the draw is over (clips * frames, 4, h, w), ComfyUI's
    LATENT layout, so a seeded generator gives ComfyUI's noise for the same seed.
    """
    clips, frames = shape[:2]
    flat = torch.randn((clips * frames, *shape[2:]), generator=generator, dtype=torch.float32, device="cpu")
    return flat.reshape(shape)


def seeded_generator(seed: int) -> torch.Generator:
    """A private CPU generator: seeding it leaves torch's global RNG untouched."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


@torch.no_grad()
def sample(
    unet: torch.nn.Module,
    cond: Conditioning,
    generator: torch.Generator,
    steps: int = 1,
    init_latent: torch.Tensor | None = None,
    denoise_strength: float = 1.0,
    callback=None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate clean latents (model space, float32) in `steps` UNet passes.

    Full generation: x = eps * sqrt(sigma_max^2 + 1), x0 = D(x; sigma_max).
    Editing (`init_latent` in model space, `denoise_strength` < 1 or given): x = x_init + s * eps.
    Between steps: x = x0 + s_next * eps with fresh noise. `callback(step_index)` after each pass.
    `mask` (broadcast to the latent, 1 = re-render, 0 = keep) keeps `init_latent` outside it
    after every pass, as KSampler does with a LATENT's noise_mask.
    """
    if mask is not None and init_latent is None:
        raise InputError("a noise mask needs the latent clip it masks (an input LATENT).")
    device = cond.image_latent.device
    start_sigma = sigma_for_denoise(denoise_strength)
    levels = sampling_levels(steps, start_sigma)
    eps = draw_noise(cond.latent_shape, generator).to(device)
    if init_latent is None:
        if denoise_strength != 1.0:
            raise InputError("denoise below 1.0 needs a latent clip to start from (an input LATENT or --init-latent).")
        x = eps * math.sqrt(start_sigma**2 + 1)
    else:
        if tuple(init_latent.shape) != cond.latent_shape:
            raise InputError(
                f"the input latent has shape {tuple(init_latent.shape)} but the conditioning makes {cond.latent_shape} "
                "(clips, frames, channels, height/8, width/8): use the same frame count and size in the conditioner."
            )
        init = init_latent.to(device=device, dtype=torch.float32)
        mask = None if mask is None else mask.to(device=device, dtype=torch.float32)
        x = init + start_sigma * eps
    for index, sigma in enumerate(levels):
        x0 = denoise(unet, x, sigma, cond)
        if mask is not None:
            x0 = init + mask * (x0 - init)
        if index + 1 < len(levels):
            x = x0 + levels[index + 1] * draw_noise(cond.latent_shape, generator).to(device)
        if callback is not None:
            callback(index)
    return x0


def to_model_space(raw_latent: torch.Tensor) -> torch.Tensor:
    return raw_latent * VAE_SCALING_FACTOR


def to_raw_latent(model_latent: torch.Tensor) -> torch.Tensor:
    return model_latent / VAE_SCALING_FACTOR
