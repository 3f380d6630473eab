"""A generation as a sequence of named stages: condition, sample, decode.

The ComfyUI nodes call the stages one by one (each is a node); the command line calls
`generate`. Latents cross stage boundaries raw (not x 0.18215), shaped (clips, frames, 4, h, w),
float32 on the CPU, like ComfyUI's LATENT with the clips split out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from . import conditioning, decoding, limits, memory, sampling, tiny_decoder
from .acceleration import FastPath
from .errors import InputError
from .models import SVDModel
from .runtime import Runtime, place, resolve_runtime


def numerical_causes(dtype: torch.dtype) -> str:
    fix = "fp16 overflows in SVD's networks: use bf16 or fp32 (--dtype / --vae-dtype, or the loader's dtype)" if dtype == torch.float16 else "fp16 is not in use, so fp16 overflow is ruled out"
    return f"the weights may be damaged (download or convert the checkpoint again), or the input was bad; {fix}"


def check_finite(values: torch.Tensor, message: str) -> None:
    """NaN/Inf would become an all-black clip with no error: stop and name the likely cause."""
    if not torch.isfinite(values).all():
        raise InputError(message)


@dataclass
class Generation:
    frames: torch.Tensor  # (clips, frames, H, W, 3) in [0, 1]
    latents: torch.Tensor  # (clips, frames, 4, h, w) raw VAE latents
    start_images: torch.Tensor  # (clips, H, W, 3) resized start images


class SFVPipeline:
    def __init__(self, model: SVDModel, runtime: Runtime | None = None):
        self.runtime = runtime or resolve_runtime()
        self.model = place(model, self.runtime)

    @classmethod
    def from_files(cls, checkpoint: str, sfv_unet: str | None = None, device="auto", dtype="auto", vae_dtype="auto", attention="sdpa", compile="auto",
                   sfv_lora: str | None = None, lora_strength: float = 1.0) -> "SFVPipeline":
        """The checkpoint's model, its UNet replaced by `sfv_unet` and/or `sfv_lora` merged into
        whichever UNet that leaves (at `lora_strength`)."""
        from .checkpoints import load_model, load_sfv_unet
        from .lora import apply_lora_file

        limits.LORA_STRENGTH.check(lora_strength)
        runtime = resolve_runtime(device, dtype, vae_dtype, attention, compile)
        model = load_model(checkpoint, dtype=runtime.dtype, device=runtime.device)
        if sfv_unet:
            model = load_sfv_unet(sfv_unet, model, dtype=runtime.dtype, device=runtime.device)
        if sfv_lora:
            model = apply_lora_file(model, sfv_lora, lora_strength)
        return cls(model, runtime)

    @cached_property
    def fast(self) -> FastPath:
        """Compiled / graphed calls, made on first use: by then the weights are where they compute."""
        return FastPath(self.model, self.runtime)

    def condition(self, images: torch.Tensor, **settings) -> tuple[sampling.Conditioning, torch.Tensor]:
        """Start images (B, H, W, C) in [0, 1] -> conditioning on the device, resized images."""
        cond, resized = conditioning.condition(self.model, images.to(self.runtime.device), **settings)
        return cond.to(self.runtime.device), resized

    def sample(self, cond: sampling.Conditioning, seed: int, steps: int = 1, init_latents: torch.Tensor | None = None, denoise: float = 1.0, callback=None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Raw latents (clips, frames, 4, h, w), float32 on the CPU. `mask`: re-render only where 1."""
        limits.SEED.check(seed)
        limits.DENOISE.check(denoise)
        if init_latents is not None:
            check_finite(init_latents, "the input latent holds NaN or infinite values: encode or sample that clip again.")
        init = None if init_latents is None else sampling.to_model_space(init_latents.float())
        clips, frames, _channels, height, width = cond.latent_shape
        memory.check_model_stages(self.model, clips, frames, height * 8, width * 8, stages=("the UNet pass",))
        x0 = sampling.sample(self.fast.unet, cond, sampling.seeded_generator(seed), steps, init, denoise, callback, mask)
        check_finite(x0, f"sampling produced NaN or infinite values: {numerical_causes(self.runtime.dtype)}.")
        return sampling.to_raw_latent(x0).cpu()

    def load_decoder(self, path: str) -> tiny_decoder.TinyDecoder:
        """A tiny decoder file, checked against this model's latent space, placed like the VAE."""
        decoder = tiny_decoder.load_tiny_decoder(path, self.runtime.device, self.runtime.vae_dtype)
        tiny_decoder.check_fits(decoder, self.model.vae)
        return decoder

    def decode(self, latents: torch.Tensor, chunk_frames: int | None = None, overlap: int = 0, callback=None, decoder: tiny_decoder.TinyDecoder | None = None) -> torch.Tensor:
        """The decode stage: the model's temporal VAE through the fast path (compiled where the
        runtime says so), or `decoder` (a tiny decoder, run eagerly, streamed `chunk_frames` at a
        time with no seams, so `overlap` does not apply to it)."""
        check_finite(latents, "the latent to decode holds NaN or infinite values: sample or encode that clip again.")
        if decoder is not None:
            tiny_decoder.check_fits(decoder, self.model.vae)
            frames = tiny_decoder.decode_latents(decoder, latents, chunk_frames or None, callback)
        else:
            frames = self._decode_full(latents, chunk_frames, overlap, callback)
        check_finite(frames, f"VAE decoding produced NaN or infinite values: {numerical_causes(self.runtime.vae_dtype)}.")
        return frames

    def _decode_full(self, latents: torch.Tensor, chunk_frames: int | None, overlap: int, callback) -> torch.Tensor:
        height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
        chunk = chunk_frames or latents.shape[1]
        decoding.check_decode_memory(self.model.vae, min(chunk, latents.shape[1]), height, width)
        return decoding.decode_latents(self.model.vae, latents, chunk_frames, overlap, callback, self.fast.decoder)

    def generate(self, images: torch.Tensor, *, seed: int = 0, steps: int = 1, chunk_frames: int | None = None, overlap: int = 0, decoder: tiny_decoder.TinyDecoder | None = None, progress=None, **condition_settings) -> Generation:
        """One clip per start image. `progress(stage, done, total)` reports each stage."""
        report = progress or (lambda stage, done, total: None)
        cond, start_images = self.condition(images, **condition_settings)
        report("condition", 1, 1)
        latents = self.sample(cond, seed, steps, callback=lambda i: report("sample", i + 1, steps))
        frames = self.decode(latents, chunk_frames, overlap, callback=lambda done, total: report("decode", done, total), decoder=decoder)
        return Generation(frames=frames, latents=latents, start_images=start_images)
