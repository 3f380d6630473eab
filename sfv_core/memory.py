"""Working memory of each stage, estimated before it runs, against the memory that is free.

Each stage's peak is dominated by feature maps of its network's first (widest-resolution)
level, so each estimate is a count of such maps: (images x height x width x first-level
channels x element size) x MAPS. The counts are calibrated by benchmarks/bench_memory.py on
measured peak RSS (README, "Memory"). Free memory is the device's: on CUDA what the driver
reports, on the CPU the smaller of MemAvailable and the cgroup's limit minus its usage (a
container's memory.max is what the OOM killer enforces, not the host's free memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError, InputError

# Feature maps of the first level alive at the peak of each stage (fp32, CPU). Measured with
# benchmarks/bench_memory.py on the tiny config: encode 5.4, UNet 41-54 (of its 32 channels),
# decode 9.5-10.6; the decoder at full size 8 (2.4 GB per 1024x576 frame). Rounded up for margin.
ENCODE_MAPS = 8
UNET_MAPS = 80
DECODE_MAPS = 12
LATENT_SCALE = 8  # pixels per latent pixel, each way


def first_width(config: dict) -> int:
    """Channels of a network's first level, from its config (checked: configs come from files)."""
    widths = config.get("block_out_channels") if isinstance(config, dict) else None
    if not isinstance(widths, (list, tuple)) or not widths or not isinstance(widths[0], int) or widths[0] <= 0:
        raise CheckpointError(f"the model config's block_out_channels is {widths!r}, not a list of channel counts: the checkpoint's config is damaged.")
    return widths[0]


def element_bytes(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def encode_bytes(vae_config: dict, dtype: torch.dtype, images: int, height: int, width: int) -> int:
    """VAE encoding of the start images, all at once, at the video size."""
    return ENCODE_MAPS * images * height * width * first_width(vae_config) * element_bytes(dtype)


def unet_bytes(unet_config: dict, dtype: torch.dtype, clips: int, frames: int, height: int, width: int) -> int:
    """One UNet pass over every frame of every clip (they run as one batch)."""
    pixels = clips * frames * (height // LATENT_SCALE) * (width // LATENT_SCALE)
    return UNET_MAPS * pixels * first_width(unet_config) * element_bytes(dtype)


def decode_bytes(vae_config: dict, dtype: torch.dtype, frames: int, height: int, width: int) -> int:
    """The temporal decoder over `frames` frames decoded together."""
    return DECODE_MAPS * frames * height * width * first_width(vae_config) * element_bytes(dtype)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process's cgroup may still allocate (v2 memory.max, v1 limit_in_bytes), or None."""
    for limit_name, usage_name in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit, usage = _read_int(root / limit_name), _read_int(root / usage_name)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 writes a huge number for "no limit"
            return max(0, limit - usage)
    return None


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_bytes(device: torch.device) -> int | None:
    """Memory free for work on `device`; None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    known = [value for value in (mem_available(), cgroup_headroom()) if value is not None]
    return min(known) if known else None


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


@dataclass(frozen=True)
class Stage:
    name: str  # "VAE encoding of the start images", ...
    need: int  # bytes
    per_frame: int = 0  # bytes per frame; 0 when the frame count does not matter
    frames_fix: str = "at most {} frames at this size"


def generation_stages(unet_config: dict, vae_config: dict, dtype: torch.dtype, vae_dtype: torch.dtype,
                      clips: int, frames: int, height: int, width: int, decode_chunk: int = 0) -> list[Stage]:
    """Encode, sample and decode of a generation, in the order they run."""
    chunk = min(decode_chunk or frames, frames)
    return [
        Stage("VAE encoding of the start images", encode_bytes(vae_config, vae_dtype, clips, height, width)),
        Stage("the UNet pass", unet_bytes(unet_config, dtype, clips, frames, height, width), unet_bytes(unet_config, dtype, clips, 1, height, width)),
        decode_stage(vae_config, vae_dtype, chunk, height, width),
    ]


def check_model_stages(model, clips: int, frames: int, height: int, width: int, stages=("VAE encoding of the start images", "the UNet pass")) -> None:
    """The named stages of a generation with a loaded `SVDModel`, on its devices and dtypes."""
    unet, vae = next(model.unet.parameters()), next(model.vae.parameters())
    planned = generation_stages(model.unet.config, model.vae.config, unet.dtype, vae.dtype, clips, frames, height, width)
    check_stages([stage for stage in planned if stage.name in stages], unet.device, width, height)


def decode_stage(vae_config: dict, dtype: torch.dtype, chunk: int, height: int, width: int) -> Stage:
    return Stage(f"decoding {chunk} frames at once", decode_bytes(vae_config, dtype, chunk, height, width),
                 decode_bytes(vae_config, dtype, 1, height, width), "frames per chunk (--decode-chunk) of {} or fewer")


def largest_size(width: int, height: int, need: int, free: int) -> tuple[int, int]:
    """The largest width x height of the same aspect (multiples of 8) whose need fits `free`."""
    scale = math.sqrt(free / need) if need else 1.0
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


def check_stages(stages: list[Stage], device: torch.device, width: int, height: int, reserved: int = 0) -> None:
    """Refuse, before any of them runs, the first stage that would not fit, saying what would.

    `reserved`: bytes still to be taken before the stages run (weights not loaded yet)."""
    free = free_bytes(device)
    if free is None:
        return
    available = max(free - reserved, 0)
    for stage in stages:
        if stage.need <= available:
            continue
        fits_w, fits_h = largest_size(width, height, stage.need, available)
        fixes = [f"a size of at most {fits_w}x{fits_h}" if min(fits_w, fits_h) >= 16 else "a much smaller size"]
        if stage.per_frame and available // stage.per_frame >= 1:
            fixes.insert(0, stage.frames_fix.format(available // stage.per_frame))
        weights = f" besides {_gib(reserved)} of weights" if reserved >= 2**26 else ""
        raise InputError(
            f"{stage.name} at {width}x{height} needs about {_gib(stage.need)}, but {_gib(available)} is free on {device}{weights}: "
            f"use {' or '.join(fixes)}, or a device with more memory."
        )
