"""Temporal VAE decoding in chunks of a user-set number of frames.

The temporal decoder mixes frames only inside the chunk it is given, so the chunk size is a
user setting, never derived from free memory: the same settings give the same video on any
card. Optional overlapping chunks are cross-faded over the overlap to hide seams.
"""

from __future__ import annotations

import logging

import torch

from . import memory
from .errors import InputError

log = logging.getLogger("sfv")


def plan_chunks(num_frames: int, chunk_frames: int | None, overlap: int = 0) -> list[tuple[int, int]]:
    """[start, end) frame ranges covering the clip; consecutive ranges share `overlap` frames."""
    if chunk_frames is not None and chunk_frames < 0:
        raise InputError(f"frames per chunk must be 0 (the whole clip) or more, got {chunk_frames}: set it to 0 or a positive number.")
    chunk = num_frames if not chunk_frames or chunk_frames >= num_frames else chunk_frames
    if chunk == num_frames:
        return [(0, num_frames)]
    if not 0 <= overlap < chunk:
        raise InputError(f"overlap must be between 0 and frames per chunk - 1 ({chunk - 1}), got {overlap}.")
    ranges, start = [], 0
    while True:
        end = min(start + chunk, num_frames)
        ranges.append((start, end))
        if end == num_frames:
            return ranges
        start = end - overlap


def blend_weights(ranges: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per-frame weights of each chunk: linear cross-fades where chunks overlap, summing to 1."""
    weights = []
    for index, (start, end) in enumerate(ranges):
        w = torch.ones(end - start)
        if index > 0:
            fade_in = ranges[index - 1][1] - start
            w[:fade_in] = torch.arange(1, fade_in + 1) / (fade_in + 1)
        if index + 1 < len(ranges):
            fade_out = end - ranges[index + 1][0]
            w[end - start - fade_out :] = torch.arange(fade_out, 0, -1) / (fade_out + 1)
        weights.append(w)
    return weights


def check_latents(raw_latents: torch.Tensor) -> None:
    if not torch.isfinite(raw_latents).all():
        raise InputError("the LATENT contains NaN or infinite values, so it cannot be decoded: re-run the sampler (in fp32 or bf16 rather than fp16) or check the node that made the latent.")


def to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """Decoder output (..., 3, H, W) in about [-1, 1] -> frames (..., H, W, 3) float32 in [0, 1] on the CPU."""
    return ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(-3, -1).cpu()


def vae_decoder(vae):
    """The temporal VAE's decode as `decoder(latents, num_frames) -> pixels`."""
    return lambda latents, num_frames: vae.decode(latents, num_frames=num_frames).sample


def decode_in_fp32(vae, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
    """One chunk decoded with the decoder's weights in fp32 for the call (exact round trip back)."""
    dtype = next(vae.decoder.parameters()).dtype
    vae.decoder.float()
    try:
        return vae.decode(latents.float(), num_frames=num_frames).sample
    finally:
        vae.decoder.to(dtype)


def decode_chunk(vae, decoder, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`decoder(latents, num_frames)` -> pixels; a reduced-precision decode that overflowed
    (SVD's VAE does in fp16) is redone in fp32, with a warning."""
    pixels = decoder(latents, num_frames)
    if pixels.dtype != torch.float32 and not torch.isfinite(pixels).all():
        log.warning("the %s decode of a chunk of %d frames overflowed (NaN/inf): redoing it in fp32 (set the VAE dtype to fp32 to avoid the redo)",
                    str(pixels.dtype).removeprefix("torch."), num_frames)
        pixels = decode_in_fp32(vae, latents, num_frames)
    return pixels


@torch.no_grad()
def decode_latents(vae, raw_latents: torch.Tensor, chunk_frames: int | None = None, overlap: int = 0, callback=None, decoder=None) -> torch.Tensor:
    """Raw latents (clips, frames, 4, h, w) -> frames (clips, frames, H, W, 3) float32 in [0, 1] on the CPU.

    `callback(done, total)` is called after each decoded chunk (progress and cancellation).
    `decoder(latents, num_frames)` -> pixels is the VAE's decode (the fast path passes its compiled one).
    """
    check_latents(raw_latents)
    decoder = decoder or vae_decoder(vae)
    clips, num_frames = raw_latents.shape[:2]
    ranges = plan_chunks(num_frames, chunk_frames, overlap)
    weights = blend_weights(ranges)
    dtype, device = next(vae.parameters()).dtype, next(vae.parameters()).device
    total, done, out = clips * len(ranges), 0, None
    for clip in range(clips):
        for (start, end), weight in zip(ranges, weights):
            z = raw_latents[clip, start:end].to(device=device, dtype=dtype)
            pixels = decode_chunk(vae, decoder, z, end - start)
            frames = to_frames(pixels)
            if out is None:
                out = torch.zeros((clips, num_frames, *frames.shape[1:]), dtype=torch.float32)
            out[clip, start:end] += frames * weight.view(-1, 1, 1, 1)
            done += 1
            if callback is not None:
                callback(done, total)
    return out


def decode_bytes_per_frame(vae, height: int, width: int) -> int:
    return memory.decode_bytes(vae.config, next(vae.parameters()).dtype, 1, height, width)


def check_decode_memory(vae, chunk_frames: int, height: int, width: int) -> None:
    """Refuse, with the chunk size that fits, a decode that would run out of memory."""
    first = next(vae.parameters())
    memory.check_stages([memory.decode_stage(vae.config, first.dtype, chunk_frames, height, width)], first.device, width, height)
