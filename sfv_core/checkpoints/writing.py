"""Writing. Every file is written to a temporary name in its folder, then renamed over the
target, so a crash never leaves a half-written file under the real name."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import convert
from ..errors import CheckpointError
from ..files import atomic_path
from ..models import SVDModel
from .layout import _NATIVE_ENCODER_FOLDER
from .strict import _cast

def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    with atomic_path(path) as temporary:
        write(str(temporary))
    return path


def _write_safetensors(path, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None, metadata: Mapping[str, str] | None = None) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: write weights to a .safetensors path.")
    ready = {key: _cast(tensor.detach(), dtype or tensor.dtype, "cpu").contiguous() for key, tensor in tensors.items()}
    return _atomic_write(path, lambda temporary: save_file(ready, temporary, metadata={"format": "pt", **(metadata or {})}))


def _write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, lambda temporary: Path(temporary).write_text(text))


def model_to_single_file_state_dict(model: SVDModel) -> dict[str, torch.Tensor]:
    """The original single-file layout of `model` (what `load_model` reads back).

    first_stage_model.encoder is the native encoder when the model has one, else a copy of
    the VAE's encoder; conditioner.embedders.3 holds the VAE's encoder and quant_conv.
    """
    unet, vae, clip = (module.state_dict() for module in (model.unet, model.vae, model.image_encoder))
    native = model.native_encoder.state_dict() if model.native_encoder is not None else {
        # A copy: safetensors refuses two names for one storage.
        key.removeprefix("encoder."): tensor.clone() for key, tensor in vae.items() if key.startswith("encoder.")
    }
    out = convert.to_original(convert.unet_keymap(model.unet.config, unet.keys()), unet)
    out |= convert.to_original(convert.vae_keymap(model.vae.config, vae.keys()), vae)
    out |= convert.to_original(convert.native_encoder_keymap(model.vae.config, native.keys()), native)
    out |= convert.to_original(convert.image_encoder_keymap(model.image_encoder.config.to_dict(), clip.keys()), clip)
    return out


def save_single_file(model: SVDModel, path, dtype: torch.dtype | None = None, metadata: Mapping[str, str] | None = None) -> Path:
    """Write `model` as one original-layout .safetensors file (ComfyUI's checkpoint loaders
    read it); floating tensors cast to `dtype` when given. Returns the path."""
    return _write_safetensors(path, model_to_single_file_state_dict(model), dtype, metadata)


def save_unet_file(unet: torch.nn.Module, path, layout: str = "diffusers", dtype: torch.dtype | None = None) -> Path:
    """Write a UNet alone (an SF-V result): diffusers names, or SGM names without a prefix
    (the form ComfyUI's Load Diffusion Model reads from models/diffusion_models)."""
    state = unet.state_dict()
    if layout == "sgm":
        state = convert.to_original(convert.unet_keymap(unet.config, state.keys(), root=""), state)
    elif layout != "diffusers":
        raise ValueError(f"layout must be 'diffusers' or 'sgm', got {layout!r}")
    return _write_safetensors(path, state, dtype)


def _pipeline_extras(model: SVDModel) -> dict[str, str]:
    """model_index.json, scheduler and feature extractor configs, so that diffusers'
    StableVideoDiffusionPipeline.from_pretrained opens the folder too (SVD's own values)."""
    from diffusers import EulerDiscreteScheduler

    from ..conditioning import CLIP_MEAN, CLIP_STD
    from ..sampling import SIGMA_MAX, SIGMA_MIN

    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
        sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, timestep_spacing="leading", timestep_type="continuous", steps_offset=1,
    )
    size = model.image_encoder.config.image_size
    processor = {  # CLIPImageProcessor's saved form (written as data: its class may need torchvision)
        "image_processor_type": "CLIPImageProcessor", "feature_extractor_type": "CLIPFeatureExtractor",
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": size, "width": size}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "do_convert_rgb": True,
    }
    index = {
        "_class_name": "StableVideoDiffusionPipeline",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
    }
    return {
        "model_index.json": json.dumps(index, indent=2),
        "scheduler/scheduler_config.json": scheduler.to_json_string(),
        "feature_extractor/preprocessor_config.json": json.dumps(processor, indent=2),
    }


def save_diffusers_folder(model: SVDModel, path, dtype: torch.dtype | None = None) -> Path:
    """Write `model` as a diffusers folder (configs + safetensors per part, plus the pipeline
    files). A native encoder that differs from the VAE's goes to `native_encoder/`, which
    diffusers ignores and `load_model` reads back. Returns the folder."""
    folder = Path(path)
    _write_text(folder / "unet" / "config.json", model.unet.to_json_string())
    _write_safetensors(folder / "unet" / "diffusion_pytorch_model.safetensors", model.unet.state_dict(), dtype)
    _write_text(folder / "vae" / "config.json", model.vae.to_json_string())
    _write_safetensors(folder / "vae" / "diffusion_pytorch_model.safetensors", model.vae.state_dict(), dtype)
    _write_text(folder / "image_encoder" / "config.json", model.image_encoder.config.to_json_string())
    _write_safetensors(folder / "image_encoder" / "model.safetensors", model.image_encoder.state_dict(), dtype)
    native_file = folder / _NATIVE_ENCODER_FOLDER / "diffusion_pytorch_model.safetensors"
    if model.native_encoder is not None:
        _write_safetensors(native_file, model.native_encoder.state_dict(), dtype)
    else:
        native_file.unlink(missing_ok=True)  # a stale one from an earlier save would be loaded back
    for name, text in _pipeline_extras(model).items():
        _write_text(folder / name, text)
    return folder
