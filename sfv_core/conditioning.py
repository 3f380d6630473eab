"""Conditioning of SVD-family models on a start image.

Two preprocessing variants, both exact:
- "reference": how SVD was trained and how SGM/diffusers sample. CLIP sees the clean frame
  squashed to 224 px with an antialiased (Gaussian blur + bicubic) resize; the VAE encodes
  the frame with noise augmentation added in [-1, 1] pixel space, using SVD's conditioning
  encoder (with its quant_conv).
- "comfyui_native": ComfyUI's SVD_img2vid_Conditioning. CLIP sees the ORIGINAL image resized
  on its short side and center-cropped, rounded to 8 bit; the frame is resized bilinearly with
  a center crop; augmentation is added in [0, 1] space (twice the reference's noise for the
  same number); the VAE encodes with first_stage_model's encoder (no quant_conv).

Images come in ComfyUI's IMAGE layout: (B, H, W, C) floats in [0, 1], C in {1, 3, 4}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import limits, memory
from .errors import InputError
from .sampling import Conditioning

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VARIANTS = ("reference", "comfyui_native")
RESIZE_MODES = ("crop", "pad", "stretch")


def check_video_size(width: int, height: int, num_frames: int) -> None:
    limits.check_size(width, height)
    limits.FRAMES.check(num_frames)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) or (H, W, C) in [0, 1] -> (B, H, W, 3). Grey is repeated; alpha is composited over white."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4) or images.shape[0] == 0:
        raise InputError(f"expected images shaped (batch, height, width, channels) with 1-4 channels, got {tuple(images.shape)}.")
    images = images.float()
    channels = images.shape[-1]
    if channels in (2, 4):  # grey+alpha or RGBA
        colour, alpha = images[..., :-1], images[..., -1:]
        images = colour * alpha + (1.0 - alpha)
    if images.shape[-1] == 1:
        images = images.expand(-1, -1, -1, 3)
    return images.clamp(0.0, 1.0)


def _center_crop_box(old_width: int, old_height: int, width: int, height: int) -> tuple[int, int]:
    """Pixels to trim from each side to reach the target aspect ratio (ComfyUI's geometry)."""
    old_aspect, new_aspect = old_width / old_height, width / height
    if old_aspect > new_aspect:  # at least one pixel stays (a 1-pixel-thin image rounds to none)
        return min(round((old_width - old_width * (new_aspect / old_aspect)) / 2), (old_width - 1) // 2), 0
    if old_aspect < new_aspect:
        return 0, min(round((old_height - old_height * (old_aspect / new_aspect)) / 2), (old_height - 1) // 2)
    return 0, 0


def resize_images(images: torch.Tensor, width: int, height: int, mode: str = "crop", native: bool = False) -> torch.Tensor:
    """(B, H, W, 3) in [0, 1] -> (B, 3, height, width) in [0, 1].

    crop: fill the frame, trimming the long side; pad: fit inside, black bars; stretch: squash.
    `native` uses ComfyUI's plain bilinear filter; otherwise bicubic with antialiasing.
    """
    if mode not in RESIZE_MODES:
        raise InputError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}.")
    pixels = images.movedim(-1, 1)
    old_height, old_width = pixels.shape[-2:]

    def interpolate(x, size):
        if native:
            return F.interpolate(x, size=size, mode="bilinear")
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)

    if mode == "crop":
        trim_x, trim_y = _center_crop_box(old_width, old_height, width, height)
        pixels = pixels[..., trim_y : old_height - trim_y, trim_x : old_width - trim_x]
        return interpolate(pixels, (height, width))
    if mode == "stretch":
        return interpolate(pixels, (height, width))
    scale = min(width / old_width, height / old_height)
    inner_w, inner_h = max(1, round(old_width * scale)), max(1, round(old_height * scale))
    inner = interpolate(pixels, (inner_h, inner_w))
    canvas = pixels.new_zeros(pixels.shape[0], 3, height, width)
    top, left = (height - inner_h) // 2, (width - inner_w) // 2
    canvas[..., top : top + inner_h, left : left + inner_w] = inner
    return canvas


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


def resize_antialiased(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SGM's CLIP resize: Gaussian blur sized to the scale factor, then bicubic (align_corners).

    (B, 3, H, W) -> (B, 3, *size). Kernel sizes and sigmas follow the original so embeddings match.
    """
    height, width = images.shape[-2:]
    sigmas = [max((height / size[0] - 1.0) / 2.0, 0.001), max((width / size[1] - 1.0) / 2.0, 0.001)]
    kernel_sizes = [int(max(2.0 * 2 * s, 3)) for s in sigmas]
    kernel_sizes = [k + 1 if k % 2 == 0 else k for k in kernel_sizes]
    channels = images.shape[1]
    for axis, (k, s) in enumerate(zip(kernel_sizes, sigmas)):
        kernel = _gaussian_kernel(k, s).to(images)
        shape = (1, 1, k, 1) if axis == 0 else (1, 1, 1, k)
        front = (k - 1) // 2
        pad = (0, 0, front, k - 1 - front) if axis == 0 else (front, k - 1 - front, 0, 0)
        images = F.conv2d(F.pad(images, pad, mode="reflect"), kernel.reshape(shape).expand(channels, -1, -1, -1), groups=channels)
    return F.interpolate(images, size=size, mode="bicubic", align_corners=True)


def _normalize_for_clip(pixels01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, dtype=pixels01.dtype, device=pixels01.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels01.dtype, device=pixels01.device).view(1, 3, 1, 1)
    return (pixels01 - mean) / std


def _module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _embed(image_encoder, pixel_values: torch.Tensor) -> torch.Tensor:
    pixel_values = pixel_values.to(device=image_encoder.device, dtype=_module_dtype(image_encoder))
    return image_encoder(pixel_values=pixel_values).image_embeds.unsqueeze(1)


@torch.no_grad()
def clip_image_embeds(image_encoder, images: torch.Tensor) -> torch.Tensor:
    """Reference CLIP embedding. images: (B, 3, H, W) in [-1, 1] -> (B, 1, D)."""
    size = image_encoder.config.image_size
    pixels = (resize_antialiased(images.float(), (size, size)) + 1.0) / 2.0
    return _embed(image_encoder, _normalize_for_clip(pixels))


@torch.no_grad()
def clip_image_embeds_native(image_encoder, images: torch.Tensor) -> torch.Tensor:
    """ComfyUI's clip_preprocess (short-side resize, center crop, 8-bit rounding).

    images: (B, H, W, 3) in [0, 1], the ORIGINAL start image -> (B, 1, D).
    """
    size = image_encoder.config.image_size
    pixels = images.movedim(-1, 1).float()
    if pixels.shape[-2:] != (size, size):
        scale = size / min(pixels.shape[-2:])
        scaled = (round(scale * pixels.shape[-2]), round(scale * pixels.shape[-1]))
        pixels = F.interpolate(pixels, size=scaled, mode="bicubic", antialias=True)
        top, left = (pixels.shape[-2] - size) // 2, (pixels.shape[-1] - size) // 2
        pixels = pixels[..., top : top + size, left : left + size]
    pixels = torch.clip(255.0 * pixels, 0, 255).round() / 255.0
    return _embed(image_encoder, _normalize_for_clip(pixels))


def _augment(images: torch.Tensor, augmentation: float, generator: torch.Generator | None) -> torch.Tensor:
    if augmentation <= 0:
        return images
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32, device="cpu")
    return images + augmentation * noise.to(images.device)


@torch.no_grad()
def encode_image_latent(vae, images: torch.Tensor, augmentation: float, generator: torch.Generator | None) -> torch.Tensor:
    """Reference image latent: mode of the conditioning encoder on images + aug * randn.

    images: (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) raw VAE latent (not x 0.18215).
    """
    noisy = _augment(images.float(), augmentation, generator)
    noisy = noisy.to(device=vae.device, dtype=_module_dtype(vae))
    return vae.encode(noisy).latent_dist.mode().float()


@torch.no_grad()
def encode_image_latent_native(encoder, images01: torch.Tensor, augmentation: float, generator: torch.Generator | None) -> torch.Tensor:
    """ComfyUI's path: aug noise in [0, 1] space, then x*2-1, bare encoder, mean (the mode).

    images01: (B, 3, H, W) in [0, 1] -> (B, 4, H/8, W/8).
    """
    # Noise drawn in IMAGE layout (B, H, W, 3), as ComfyUI's randn_like(pixels) draws it.
    noisy = _augment(images01.float().movedim(1, -1), augmentation, generator).movedim(-1, 1) * 2.0 - 1.0
    first = next(encoder.parameters())
    moments = encoder(noisy.to(device=first.device, dtype=first.dtype))
    return moments.chunk(2, dim=1)[0].float()


def time_ids(fps: int, motion_bucket_id: int, augmentation: float, clips: int, device=None) -> torch.Tensor:
    """SVD's micro-conditioning [fps - 1, motion_bucket_id, augmentation], one row per clip."""
    row = torch.tensor([fps - 1, motion_bucket_id, augmentation], dtype=torch.float32, device=device)
    return row.unsqueeze(0).repeat(clips, 1)


def condition(
    model,
    images: torch.Tensor,
    *,
    width: int = 1024,
    height: int = 576,
    num_frames: int = 14,
    fps: int = 7,
    motion_bucket_id: int = 127,
    augmentation: float = 0.02,
    variant: str = "reference",
    resize: str = "crop",
    augmentation_seed: int = 0,
) -> tuple[Conditioning, torch.Tensor]:
    """Conditioning for one clip per start image, and the resized start images (B, H, W, 3).

    `model` is an `SVDModel`. Augmentation noise comes from its own seeded generator, so the
    same inputs always give the same conditioning (and a new sampler seed does not change it).
    """
    limits.check_generation(width, height, num_frames, fps, motion_bucket_id, augmentation)
    memory.check_model_stages(model, images.shape[0] if images.ndim == 4 else 1, num_frames, height, width)
    if variant not in VARIANTS:
        raise InputError(f"preprocessing variant must be one of {VARIANTS}, got {variant!r}.")
    images = to_rgb(images)
    generator = torch.Generator(device="cpu").manual_seed(int(augmentation_seed))
    native = variant == "comfyui_native"
    resized01 = resize_images(images, width, height, resize, native=native)
    if native:
        embeds = clip_image_embeds_native(model.image_encoder, images)
        encoder = model.native_encoder if model.native_encoder is not None else model.vae.encoder
        latent = encode_image_latent_native(encoder, resized01, augmentation, generator)
    else:
        resized = resized01 * 2.0 - 1.0
        embeds = clip_image_embeds(model.image_encoder, resized)
        latent = encode_image_latent(model.vae, resized, augmentation, generator)
    ids = time_ids(fps, motion_bucket_id, augmentation, images.shape[0], device=latent.device)
    cond = Conditioning(image_embeds=embeds.float(), image_latent=latent, added_time_ids=ids, num_frames=num_frames)
    return cond, resized01.movedim(1, -1).cpu()
