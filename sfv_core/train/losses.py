"""Noise-level draws and losses, each a short function that reads like its equation.

Logits come as a list, one tensor per discriminator head, each holding one logit per
position. Losses average positions within a head, then average the heads (`mean`, the
default: turning heads off in ablations keeps the balance with the reconstruction loss) or
sum them (`sum`, as ADD sums its heads; 8x the mean with all 8 heads). The paper states neither.
"""

from __future__ import annotations


import torch

from ..sampling import karras_sigmas


def randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Standard normal drawn on the CPU from the trainer's own generator (device-independent, resumable)."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def generator_sigmas(clips: int, levels: list[float], generator: torch.Generator, device) -> torch.Tensor:
    """The generator's input level per clip, uniform over `levels` (SF-V: 700, 70.54, 2.27)."""
    choice = torch.randint(len(levels), (clips,), generator=generator)
    return torch.tensor(levels, dtype=torch.float32)[choice].to(device)


def discriminator_sigmas(clips: int, p_mean: float, p_std: float, count: int, generator: torch.Generator, device) -> torch.Tensor:
    """ln(sigma) ~ N(p_mean, p_std^2), snapped to the nearest (in ln) of `count` Karras levels."""
    levels = torch.tensor(karras_sigmas(count), dtype=torch.float32)
    drawn = p_mean + p_std * torch.randn(clips, generator=generator)
    nearest = (drawn[:, None] - levels.log()[None, :]).abs().argmin(dim=1)
    return levels[nearest].to(device)


def edm_sigmas(clips: int, p_mean: float, p_std: float, generator: torch.Generator, device) -> torch.Tensor:
    """EDM's training levels: ln(sigma) ~ N(p_mean, p_std^2) (SVD: 0.7, 1.6)."""
    return torch.exp(p_mean + p_std * torch.randn(clips, generator=generator)).to(device)


HEAD_REDUCTIONS = ("mean", "sum")
RECONSTRUCTION_FORMS = ("paper", "per_element")
ICT_C_PER_SQRT_DIM = 0.00054  # iCT (Song & Dhariwal 2023): c = 0.00054 sqrt(d)


def _over_heads(values: list[torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    stacked = torch.stack(values)
    return stacked.sum() if reduction == "sum" else stacked.mean()


def hinge_discriminator(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """E[relu(1 - D(real))] + E[relu(1 + D(fake))], per position."""
    terms = [torch.relu(1 - r.float()).mean() + torch.relu(1 + f.float()).mean() for r, f in zip(real_logits, fake_logits)]
    return _over_heads(terms, reduction)


def hinge_generator(fake_logits: list[torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """-E[D(fake)], per position."""
    return _over_heads([-f.float().mean() for f in fake_logits], reduction)


def per_clip_score(logits: list[torch.Tensor], clips: int) -> torch.Tensor:
    """(clips,) mean logit of each clip over positions, averaged over heads.

    Every head's first axis is clip-major ((B*T, ...) or (B*H*W, ...)), so a reshape groups by clip.
    """
    return torch.stack([l.float().reshape(clips, -1).mean(dim=1) for l in logits]).mean(dim=0)


def r1_penalty(real_logits: list[torch.Tensor], real_input: torch.Tensor) -> torch.Tensor:
    """E_clips ||grad_x D(x)||^2 at the (noised) real input; differentiable (double backward)."""
    score = per_clip_score(real_logits, real_input.shape[0]).sum()
    (grad,) = torch.autograd.grad(score, real_input, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(dim=1).mean()


def approximate_r1_penalty(real_logits: list[torch.Tensor], perturbed_logits: list[torch.Tensor], delta: float, clips: int) -> torch.Tensor:
    """E_clips [((D(x + delta*n) - D(x)) / delta)^2]: a finite-difference estimate of ||grad_x D||^2.

    For n ~ N(0, I), E[(g . n)^2] = ||g||^2, and (D(x + delta*n) - D(x)) / delta -> g . n, so this
    penalises the same quantity as `r1_penalty` without differentiating a gradient.
    """
    change = per_clip_score(perturbed_logits, clips) - per_clip_score(real_logits, clips)
    return (change / delta).pow(2).mean()


def pseudo_huber_per_element(prediction: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """mean over elements of sqrt((a - b)^2 + c^2) - c: close to L1 once errors pass c.

    Its gradient on each element is at most 1/d (d elements), so about sqrt(d) weaker than
    the paper's per-clip form whose gradient per clip has norm up to 1.
    """
    return (torch.sqrt((prediction.float() - target.float()) ** 2 + c * c) - c).mean()


def pseudo_huber_per_clip(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SF-V's Eq. 9, iCT's metric on the whole sample: sqrt(||a - b||^2 + c^2) - c per clip,
    c = 0.00054 sqrt(d) with d the clip's element count; averaged over clips."""
    squared = (prediction.float() - target.float()).pow(2).flatten(1).sum(dim=1)
    c = ICT_C_PER_SQRT_DIM * prediction[0].numel() ** 0.5
    return (torch.sqrt(squared + c * c) - c).mean()


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, form: str, element_c: float) -> torch.Tensor:
    """The pseudo-Huber reconstruction term in the named form (`paper` or `per_element`)."""
    if form == "paper":
        return pseudo_huber_per_clip(prediction, target)
    return pseudo_huber_per_element(prediction, target, element_c)


def edm_loss(x0_prediction: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """EDM's weighted x0 loss, lambda(sigma) = (sigma^2 + 1) / sigma^2 with sigma_data = 1."""
    weight = (sigma**2 + 1) / sigma**2
    per_clip = (x0_prediction.float() - x0.float()).pow(2).flatten(1).mean(dim=1)
    return (weight * per_clip).mean()




# ---- tiny decoder distillation: pixels (clips, frames, 3, H, W) of student and teacher ----


def spatial_gradients(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical neighbour differences: where the edges are."""
    return pixels[..., :, 1:] - pixels[..., :, :-1], pixels[..., 1:, :] - pixels[..., :-1, :]


def frame_differences(pixels: torch.Tensor) -> torch.Tensor:
    return pixels[:, 1:] - pixels[:, :-1]


def decoder_distillation_losses(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
    """L1 of the pixels, of their spatial gradients (edges: against the blur a plain L1 tolerates)
    and of their frame-to-frame differences (temporal consistency: against flicker)."""
    student, teacher = student.float(), teacher.float()
    edges = sum((s - t).abs().mean() for s, t in zip(spatial_gradients(student), spatial_gradients(teacher))) / 2
    return {
        "pixel": (student - teacher).abs().mean(),
        "edge": edges,
        "temporal": (frame_differences(student) - frame_differences(teacher)).abs().mean(),
    }
