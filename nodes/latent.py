"""ComfyUI's LATENT in the SVD convention, and sfv_core's clip layout.

A LATENT is {"samples": (clips * frames, 4, h, w)} of RAW VAE latents, frames in the batch
dimension and the clips one after another (clip 0's frames, then clip 1's, ...): what native
SVD nodes make and take. The SFV nodes add the frame count of one clip under FRAMES_KEY, so
a batch of several clips can be split again; a LATENT without it (from native nodes) is one
clip unless a node's `frames_per_clip` says otherwise.
"""

from __future__ import annotations

import torch

from ..sfv_core.errors import InputError

FRAMES_KEY = "sfv_frames_per_clip"


def pack(latents: torch.Tensor) -> dict:
    """(clips, frames, 4, h, w) -> LATENT."""
    clips, frames = latents.shape[:2]
    return {"samples": latents.reshape(clips * frames, *latents.shape[2:]), FRAMES_KEY: frames}


def _samples(latent: dict) -> torch.Tensor:
    samples = latent["samples"] if isinstance(latent, dict) and "samples" in latent else None
    if samples is None or samples.ndim != 4 or samples.shape[0] == 0:
        shape = "missing" if samples is None else tuple(samples.shape)
        raise InputError(f"expected an SVD LATENT shaped (frames, 4, height/8, width/8), got {shape}: connect a LATENT made by an SFV node or by the native SVD nodes.")
    return samples


def frames_per_clip(latent: dict, setting: int = 0) -> int:
    """Frames of one clip: `setting` if not 0, else the count the SFV nodes stored, else the whole batch."""
    batch = _samples(latent).shape[0]
    stored = latent.get(FRAMES_KEY)
    if setting and stored and setting != stored:
        raise InputError(f"frames_per_clip is {setting} but this LATENT holds clips of {stored} frames: set frames_per_clip to 0 (use the LATENT's count) or {stored}.")
    frames = setting or stored or batch
    if batch % frames:
        raise InputError(f"the LATENT holds {batch} frames, which is not a whole number of clips of {frames} frames: set frames_per_clip to the frame count of one clip (0: the whole batch is one clip).")
    return frames


def unpack(latent: dict, setting: int = 0) -> torch.Tensor:
    """LATENT -> (clips, frames, 4, h, w) float32."""
    samples = _samples(latent)
    frames = frames_per_clip(latent, setting)
    return samples.float().reshape(samples.shape[0] // frames, frames, *samples.shape[1:])


def _size(shape) -> str:
    return "x".join(str(int(n)) for n in shape)


def unpack_like(latent: dict, shape: tuple[int, int, int, int, int]) -> torch.Tensor:
    """LATENT -> (clips, frames, 4, h, w) checked against the shape a conditioning makes."""
    samples = _samples(latent)
    clips, frames, channels, height, width = shape
    stored = latent.get(FRAMES_KEY)
    if (stored and stored != frames) or tuple(samples.shape) != (clips * frames, channels, height, width):
        in_clips = f", clips of {stored} frames" if stored else ""
        raise InputError(
            f"the LATENT holds {samples.shape[0]} frames of {_size(samples.shape[1:])} latents (a {samples.shape[-1] * 8}x{samples.shape[-2] * 8} video{in_clips}), "
            f"but the conditioning makes {clips} clip{'s' if clips > 1 else ''} x {frames} frames of {_size(shape[2:])} latents (a {width * 8}x{height * 8} video): "
            "set frames, width and height in SFV Image Conditioner to the clip's, with one start image per clip."
        )
    return samples.float().reshape(shape)


def noise_mask(latent: dict, shape: tuple[int, int, int, int, int]) -> torch.Tensor | None:
    """A LATENT's noise_mask (1 = re-render, 0 = keep; at pixel or latent size, one for all
    frames or one per frame) as (clips, frames, 1, h, w), resized as KSampler resizes it."""
    mask = latent.get("noise_mask")
    if mask is None:
        return None
    clips, frames, _channels, height, width = shape
    if not isinstance(mask, torch.Tensor) or mask.ndim < 2 or mask.numel() == 0:
        raise InputError("the LATENT's noise_mask is not a mask image: use Set Latent Noise Mask with a MASK.")
    mask = mask.float().reshape(-1, 1, *mask.shape[-2:])
    if mask.shape[0] not in (1, clips * frames):
        raise InputError(f"the LATENT's noise_mask has {mask.shape[0]} frames, but the clip has {clips * frames}: use one mask, or one per frame.")
    if not torch.isfinite(mask).all():
        raise InputError("the LATENT's noise_mask holds NaN or infinite values: make the mask again.")
    mask = torch.nn.functional.interpolate(mask, size=(height, width), mode="bilinear").clamp(0.0, 1.0)
    return mask.expand(clips * frames, -1, -1, -1).reshape(clips, frames, 1, height, width)
