"""What the adversarial game is doing, logged next to the losses.

The hinge value is a poor chance detector (at 93% accuracy it can still read 1.4), so the
trainer logs per-clip accuracy of the discriminator, split by the generator's input level,
and how strongly each loss term pulls on the generated x0.
"""

from __future__ import annotations

import math

import torch

from .losses import per_clip_score

RIGHT, CLIPS = "d_right_fake", "d_clips_fake"


def level_name(level: float) -> str:
    """SF-V's levels to 2 decimals, as the paper writes them (the schedule holds more digits)."""
    return f"{round(level, 2):g}"


def accuracy_parts(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor], generator_sigma: torch.Tensor, levels: list[float]) -> dict:
    """Per clip: real is right when its mean logit is > 0, generated when < 0. Generated clips
    are counted per generator input level (right and total), so micro-batches add up."""
    clips = generator_sigma.shape[0]
    with torch.no_grad():
        real_right = (per_clip_score(real_logits, clips) > 0).float()
        fake_right = (per_clip_score(fake_logits, clips) < 0).float()
    parts = {"d_acc_real": real_right.mean().item(), "d_acc_fake": fake_right.mean().item()}
    for level in levels:
        at_level = (generator_sigma - level).abs() <= 1e-3 * level
        parts[f"{RIGHT}@{level_name(level)}"] = fake_right[at_level].sum().item()
        parts[f"{CLIPS}@{level_name(level)}"] = float(at_level.sum().item())
    return parts


def finish_accuracies(values: dict) -> dict:
    """Turn the per-level counts into accuracies d_acc_fake@LEVEL (nan where no clip had that level)."""
    out = {k: v for k, v in values.items() if not k.startswith((RIGHT, CLIPS))}
    for key, right in values.items():
        if key.startswith(RIGHT):
            level = key.split("@", 1)[1]
            clips = values[f"{CLIPS}@{level}"]
            out[f"d_acc_fake@{level}"] = right / clips if clips > 0 else math.nan
    return out


class GradientProbe:
    """Norms of the gradients two loss terms send into one tensor, read off the ordinary
    backward (no extra pass): each term gets its own view of the tensor, hooked."""

    def __init__(self):
        self.norms: dict[str, float] = {}

    def watch(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.requires_grad:
            return tensor
        view = tensor.view_as(tensor)
        view.register_hook(lambda grad: self.norms.__setitem__(name, grad.float().norm().item()))
        return view

    def ratio(self, numerator: str, denominator: str) -> float:
        top, bottom = self.norms.get(numerator, math.nan), self.norms.get(denominator, math.nan)
        return top / bottom if bottom > 0 else (math.inf if top > 0 else math.nan)
