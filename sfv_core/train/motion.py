"""Per-clip micro-conditioning for training: a motion bucket measured from the clip and a
sampled noise augmentation, so the generator learns what SVD's two dials mean instead of
seeing 127 and 0.02 on every clip.

Motion (optical-flow-free, our documented mapping): m = mean |x[t+1] - x[t]| over pixels,
channels and consecutive frame pairs, in [0, 1] pixel units; bucket = 255 * min(1, m / full_scale),
rounded. 0 is a still clip; with full_scale 0.1, SVD's default bucket 127 is m = 0.05 (the
miniature's data average 0.017 -> 43). SVD measured motion with optical flow; this is a cheaper
proxy on the same 0..255 range, monotone in how much the pixels change.

Augmentation: ln(aug) ~ N(p_mean, p_std^2) per clip (-3.0, 0.5: median 0.05, as open SVD
fine-tuning code draws it; SVD's paper does not state its distribution).
"""

from __future__ import annotations

import torch

MOTION_BUCKETS = 255


def motion_buckets(frames: torch.Tensor, full_scale: float) -> torch.Tensor:
    """frames (B, T, 3, H, W) in [-1, 1] -> (B,) motion bucket ids in [0, 255]."""
    change = (frames[:, 1:].float() - frames[:, :-1].float()).abs().flatten(1).mean(dim=1) / 2  # [-1,1] -> [0,1] units
    return torch.round(MOTION_BUCKETS * (change / full_scale).clamp(max=1.0))


def sampled_augmentation(clips: int, p_mean: float, p_std: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) conditioning-frame noise levels, lognormal."""
    return torch.exp(p_mean + p_std * torch.randn(clips, generator=generator))


def augment_per_clip(images: torch.Tensor, augmentation: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """images (B, 3, H, W) + aug_b * randn, the noise drawn on the CPU like the fixed path's."""
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32)
    return images.float() + augmentation.reshape(-1, 1, 1, 1) * noise.to(images.device)
