"""What a file is, from its key names alone: an SVD single file, an SF-V UNet, or a named
wrong kind (LoRA, image model) refused with what SF-V needs instead."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..convert import FIRST_STAGE_ROOT, UNET_ROOT
from ..errors import CheckpointError

_LORA_KEY = re.compile(r"lora_unet_|lora_te\d?_|\.lora_(down|up|A|B)\.|\.lora\.(down|up)\.|\.lora_magnitude")


def _any_startswith(keys: Iterable[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)


def _examples(keys: Iterable[str], count: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:count]) + (f", ... ({len(keys)} in all)" if len(keys) > count else "")


def _image_model_family(keys: set[str]) -> str:
    if _any_startswith(keys, "cond_stage_model.transformer."):
        return "a Stable Diffusion 1.x (SD1.5-style) image checkpoint (CLIP text encoder under cond_stage_model.transformer.)"
    if _any_startswith(keys, "cond_stage_model.model."):
        return "a Stable Diffusion 2.x image checkpoint (OpenCLIP text encoder under cond_stage_model.model.)"
    if _any_startswith(keys, "conditioner.embedders.1.model.") or _any_startswith(keys, "conditioner.embedders.0.transformer."):
        return "an SDXL image checkpoint (text encoders under conditioner.embedders.0/1, label_emb for size conditioning)"
    return "an image diffusion model"


def detect(keys: Iterable[str], label: str) -> tuple[str, str, str]:
    """(kind, layout, unet root) of a safetensors file from its key names.

    kind: "svd_single_file" (UNet + VAE + image encoder) or "sfv_unet" (a UNet only);
    layout: "sgm" (Stability's names) or "diffusers". Anything else raises CheckpointError.
    """
    keys = set(keys)
    expected = (
        "SF-V needs Stable Video Diffusion img2vid weights: the single file (svd.safetensors / svd_xt.safetensors, "
        "keys model.diffusion_model.* with temporal 'time_stack' layers, first_stage_model.*, conditioner.embedders.*), "
        "a diffusers folder of it, or an SF-V UNet file."
    )
    lora = sorted(key for key in keys if _LORA_KEY.search(key))
    if lora:
        raise CheckpointError(f"{label} is a LoRA (keys like {lora[0]!r}), not a full model: an SF-V LoRA is merged into a loaded model "
                              f"(the SFV Loader's sfv_lora input, or generate --sfv-lora). {expected}")
    if _any_startswith(keys, UNET_ROOT) or "input_blocks.0.0.weight" in keys:
        if not any("time_stack" in key for key in keys):
            raise CheckpointError(f"{label} is {_image_model_family(keys)}: its UNet has no temporal layers (no 'time_stack' keys). {expected}")
        if not _any_startswith(keys, UNET_ROOT):
            return "sfv_unet", "sgm", ""
        if _any_startswith(keys, FIRST_STAGE_ROOT) or _any_startswith(keys, "conditioner."):
            return "svd_single_file", "sgm", UNET_ROOT
        return "sfv_unet", "sgm", UNET_ROOT
    if "conv_in.weight" in keys and _any_startswith(keys, "down_blocks."):
        if not any(".temporal_res_block." in key for key in keys):
            raise CheckpointError(f"{label} is a diffusers image UNet (no temporal layers), not SVD's UNetSpatioTemporalConditionModel. {expected}")
        return "sfv_unet", "diffusers", ""
    raise CheckpointError(f"{label} is not an SVD-family checkpoint; it holds {len(keys)} tensors such as {_examples(keys)}. {expected}")
