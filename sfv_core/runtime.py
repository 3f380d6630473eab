"""The one dtype / device / attention policy.

fp32 on CPU. On CUDA, bf16 where the card supports it, else fp16; the VAE decodes in bf16
next to a bf16 model and in fp32 next to an fp16 one (SVD's VAE overflows in fp16, which is
why diffusers marks it force_upcast). Attention is PyTorch's SDPA unless asked otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)
ATTENTION_CHOICES = ("sdpa", "eager")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # UNet and image encoder
    vae_dtype: torch.dtype  # VAE encode and decode
    attention: str = "sdpa"


def _auto_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def available_devices() -> list[str]:
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device(name: str | torch.device) -> torch.device:
    """A device this machine has and sfv_core runs on, or an InputError listing those it has."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    usable = device is not None and (
        device.type == "cpu"
        or (device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count())
        or (device.type == "mps" and str(name) in available_devices())
    )
    if not usable:
        raise InputError(f"device {str(name)!r} is not available on this machine: use one of {', '.join(available_devices())}.")
    return device


def resolve_runtime(device: str | torch.device = "auto", dtype: str = "auto", vae_dtype: str = "auto", attention: str = "sdpa") -> Runtime:
    device = _auto_device() if str(device) == "auto" else check_device(device)
    for name, value in (("dtype", dtype), ("vae dtype", vae_dtype)):
        if value not in DTYPE_CHOICES:
            raise InputError(f"{name} must be one of {DTYPE_CHOICES}, got {value!r}.")
    if attention not in ATTENTION_CHOICES:
        raise InputError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}.")
    if device.type == "cpu":
        if "fp16" in (dtype, vae_dtype):
            raise InputError("fp16 is not supported on the CPU (slow and missing kernels): use fp32 or bf16.")
        model_dtype = DTYPES["fp32"] if dtype == "auto" else DTYPES[dtype]
    elif dtype == "auto":
        model_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    else:
        model_dtype = DTYPES[dtype]
    if vae_dtype == "auto":
        vae = torch.float32 if model_dtype == torch.float16 else model_dtype
    else:
        vae = DTYPES[vae_dtype]
    return Runtime(device=device, dtype=model_dtype, vae_dtype=vae, attention=attention)


def set_attention(model, attention: str) -> None:
    """Use SDPA (fused kernels) or the plain matmul-softmax path in every attention layer."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processor = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    model.unet.set_attn_processor(processor())
    model.vae.set_attn_processor(processor())
    model.image_encoder.set_attn_implementation("sdpa" if attention == "sdpa" else "eager")


def move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move only what differs (a no-op cast would still make diffusers warn)."""
    first = next(module.parameters())
    if first.device != device:
        module.to(device=device)
    if first.dtype != dtype:
        module.to(dtype=dtype)
    return module


def place(model, runtime: Runtime):
    """Move an `SVDModel` to the runtime's device and dtypes, with its attention choice."""
    move(model.unet, runtime.device, runtime.dtype)
    move(model.image_encoder, runtime.device, runtime.dtype)
    move(model.vae, runtime.device, runtime.vae_dtype)
    if model.native_encoder is not None:
        move(model.native_encoder, runtime.device, runtime.vae_dtype)
    set_attention(model, runtime.attention)
    return model
