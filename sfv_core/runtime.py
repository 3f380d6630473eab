"""The one dtype / device / attention / acceleration policy.

`plan_runtime` decides everything from (what the device is, what the user asked) and nothing
else, so every decision is testable with a made-up device; `resolve_runtime` asks torch what
the device is. `place` then applies the plan to the modules.

- CPU: fp32, no compile unless asked, no CUDA graphs, no channels_last (oneDNN picks its own
  layouts; the CPU path stays as it was measured).
- CUDA, compute capability 8.0+ (Ampere and newer): bf16 everywhere, fp32 matmuls in TF32.
- Other GPUs: fp16, the VAE in fp32 (SVD's VAE overflows in fp16: diffusers marks it
  force_upcast) unless asked for fp16, in which case a decode that overflows is redone in fp32.
- GPUs: weights channels_last (the cuDNN convolutions' fast layout); the one-step UNet call
  replayed as a CUDA graph once its shapes repeat; `torch.compile` of the UNet and the temporal
  decoder with static shapes by default ("auto"), compiled once per shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError
from .models import UNET_HEAD_DIM

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)
ATTENTION_CHOICES = ("sdpa", "eager")
COMPILE_MODES = ("off", "default", "max-autotune")
COMPILE_CHOICES = ("auto", *COMPILE_MODES)
AMPERE = (8, 0)  # first compute capability with fast bf16 and TF32


@dataclass(frozen=True)
class DeviceCapabilities:
    type: str  # "cpu", "cuda", "mps", ...
    cuda_capability: tuple[int, int] | None = None  # (major, minor) of a CUDA device


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # UNet and image encoder
    vae_dtype: torch.dtype  # VAE encode and decode
    attention: str = "sdpa"
    compile: str = "off"  # one of COMPILE_MODES: torch.compile of the UNet and the decoder
    cuda_graphs: bool = False  # replay the UNet call as a CUDA graph when its shapes repeat
    channels_last: bool = False  # convolution weights in NHWC
    tf32: bool = False  # fp32 matmuls in TF32


def device_capabilities(device: torch.device) -> DeviceCapabilities:
    if device.type == "cuda":
        return DeviceCapabilities("cuda", tuple(torch.cuda.get_device_capability(device)))
    return DeviceCapabilities(device.type)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {choices}, got {value!r}.")


def _model_dtype(caps: DeviceCapabilities, dtype: str) -> torch.dtype:
    if dtype != "auto":
        return DTYPES[dtype]
    if caps.type == "cpu":
        return torch.float32
    modern = caps.cuda_capability is not None and caps.cuda_capability >= AMPERE
    return torch.bfloat16 if modern else torch.float16


def plan_runtime(device: torch.device, caps: DeviceCapabilities, dtype: str = "auto", vae_dtype: str = "auto", attention: str = "sdpa", compile: str = "auto") -> Runtime:
    """The whole policy, a pure function of the device's capabilities and the user's choices."""
    for name, value in (("dtype", dtype), ("vae dtype", vae_dtype)):
        _check_choice(name, value, DTYPE_CHOICES)
    _check_choice("attention", attention, ATTENTION_CHOICES)
    _check_choice("compile", compile, COMPILE_CHOICES)
    if caps.type == "cpu" and "fp16" in (dtype, vae_dtype):
        raise InputError("fp16 is not supported on the CPU (slow and missing kernels): use fp32 or bf16.")
    model_dtype = _model_dtype(caps, dtype)
    if vae_dtype == "auto":
        vae = torch.float32 if model_dtype == torch.float16 else model_dtype
    else:
        vae = DTYPES[vae_dtype]
    on_cuda = caps.type == "cuda"
    if compile == "auto":
        compile = "default" if on_cuda else "off"
    return Runtime(
        device=device, dtype=model_dtype, vae_dtype=vae, attention=attention, compile=compile, cuda_graphs=on_cuda,
        channels_last=on_cuda, tf32=on_cuda and caps.cuda_capability >= AMPERE,
    )


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


def resolve_runtime(device: str | torch.device = "auto", dtype: str = "auto", vae_dtype: str = "auto", attention: str = "sdpa", compile: str = "auto") -> Runtime:
    device = _auto_device() if str(device) == "auto" else check_device(device)
    return plan_runtime(device, device_capabilities(device), dtype, vae_dtype, attention, compile)


# SDPA's kernels in the order torch's dispatcher tries them.
_SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


def sdpa_backend(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """The first SDPA kernel that runs attention of this dtype and head width on `device`
    (flash, memory-efficient, or math), found by trying each alone on a small probe."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    probe = torch.zeros(1, 1, 8, head_dim, device=device, dtype=dtype)
    for name in _SDPA_BACKENDS:
        try:
            with sdpa_kernel(getattr(SDPBackend, name)):
                torch.nn.functional.scaled_dot_product_attention(probe, probe, probe)
        except RuntimeError:  # "No available kernel" for this device / dtype / width
            continue
        return {"FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "memory-efficient", "MATH": "math"}[name]
    return "none"


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


def describe(runtime: Runtime) -> str:
    """One log line: what the generation runs with, SDPA's kernel included."""
    kernel = f"SDPA ({sdpa_backend(runtime.device, runtime.dtype, UNET_HEAD_DIM)})" if runtime.attention == "sdpa" else "eager attention"
    name = lambda dtype: str(dtype).removeprefix("torch.")
    return (
        f"{runtime.device}: UNet {name(runtime.dtype)}, VAE {name(runtime.vae_dtype)}, {kernel}, compile {runtime.compile}, "
        f"CUDA graphs {'on' if runtime.cuda_graphs else 'off'}, channels_last {'on' if runtime.channels_last else 'off'}, "
        f"TF32 {'on' if runtime.tf32 else 'off'}"
    )


def to_channels_last(module: torch.nn.Module) -> None:
    """NHWC weights for the 2D convolutions; the temporal Conv3d layers keep theirs (a 5D
    tensor has no channels_last layout, so `module.to(memory_format=...)` would refuse)."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.to(memory_format=torch.channels_last)


def place(model, runtime: Runtime):
    """Move an `SVDModel` to the runtime's device and dtypes, with its attention and layout."""
    move(model.unet, runtime.device, runtime.dtype)
    move(model.image_encoder, runtime.device, runtime.dtype)
    move(model.vae, runtime.device, runtime.vae_dtype)
    if model.native_encoder is not None:
        move(model.native_encoder, runtime.device, runtime.vae_dtype)
    set_attention(model, runtime.attention)
    if runtime.channels_last:
        for module in (model.unet, model.vae):
            to_channels_last(module)
    if runtime.tf32:
        torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls (time embeddings, fp32 VAE)
    return model
