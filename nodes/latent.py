"""ComfyUI's LATENT in the SVD convention, and sfv_core's clip layout.

A LATENT is {"samples": (clips * frames, 4, h, w)} of RAW VAE latents, frames in the batch
dimension and the clips one after another (clip 0's frames, then clip 1's, ...): what native
SVD nodes make and take. The SFV nodes add the frame count of one clip under FRAMES_KEY, so
a batch of several clips can be split again; a LATENT without it (from native nodes) is one
clip unless a node's `frames_per_clip` says otherwise.

Native batch nodes copy the dict, key included, while they change the batch: LatentFromBatch
slices it (and records each frame's place in the old batch as `batch_index`), RepeatLatentBatch
repeats it (extending `batch_index` when there is one), LatentBatch appends a second LATENT
(`batch_index`: both batches' indices, each counted from 0). So the stored count is believed
only while it is still true: it divides the batch and, where `batch_index` says where the
frames came from, every run of that many frames is one whole clip (it starts at a multiple
of the count and is consecutive). Otherwise the whole batch is one clip.
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


def stored_frames_per_clip(latent: dict) -> int | None:
    """The clip length the SFV nodes stored, if it is still true of this batch (see above)."""
    batch, stored = _samples(latent).shape[0], latent.get(FRAMES_KEY)
    if not isinstance(stored, int) or stored < 1 or batch % stored:
        return None
    origin = latent.get("batch_index")
    if origin is not None:
        if len(origin) != batch:
            return None
        for start in range(0, batch, stored):
            first = origin[start]
            if first % stored or list(origin[start:start + stored]) != list(range(first, first + stored)):
                return None
    return stored


def frames_per_clip(latent: dict, setting: int = 0) -> int:
    """Frames of one clip: `setting` if not 0 (the user's word wins), else the count the SFV
    nodes stored while it is still true, else the whole batch."""
    batch = _samples(latent).shape[0]
    frames = setting or stored_frames_per_clip(latent) or batch
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


def check_frames_fit(count: int, height: int, width: int, shape: tuple[int, int, int, int, int]) -> None:
    """Video frames (count, height, width) against the clip a conditioning makes, before they are
    encoded: a too-short input video is named, with by how much."""
    clips, frames, _channels, latent_height, latent_width = shape
    wanted = clips * frames
    if (height, width) != (latent_height * 8, latent_width * 8):
        raise InputError(f"the frames are {width}x{height} but the conditioning makes a {latent_width * 8}x{latent_height * 8} video: fit them to the conditioner's width and height (Upscale Image, crop center).")
    if count < wanted:
        raise InputError(
            f"the input video is too short: {count} frames, {wanted - count} fewer than the {wanted} the conditioning makes "
            f"({clips} clip{'s' if clips > 1 else ''} x {frames} frames). Use a longer video, or set frames in SFV Image Conditioner to {count // clips}."
        )
    if count > wanted:
        raise InputError(f"the input has {count} frames but the conditioning makes {wanted}: take the first {wanted} (Image From Batch, length {wanted}), or set frames in SFV Image Conditioner to match.")


def unpack_like(latent: dict, shape: tuple[int, int, int, int, int]) -> torch.Tensor:
    """LATENT -> (clips, frames, 4, h, w) checked against the shape a conditioning makes."""
    samples = _samples(latent)
    clips, frames, channels, height, width = shape
    stored = stored_frames_per_clip(latent)
    if (stored and stored != frames) or tuple(samples.shape) != (clips * frames, channels, height, width):
        in_clips = f", clips of {stored} frames" if stored else ""
        short = clips * frames - samples.shape[0]
        too_short = f" The input clip is {short} frame{'s' if short > 1 else ''} too short." if short > 0 and tuple(samples.shape[1:]) == shape[2:] else ""
        raise InputError(
            f"the LATENT holds {samples.shape[0]} frames of {_size(samples.shape[1:])} latents (a {samples.shape[-1] * 8}x{samples.shape[-2] * 8} video{in_clips}), "
            f"but the conditioning makes {clips} clip{'s' if clips > 1 else ''} x {frames} frames of {_size(shape[2:])} latents (a {width * 8}x{height * 8} video): "
            f"set frames, width and height in SFV Image Conditioner to the clip's, with one start image per clip.{too_short}"
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
