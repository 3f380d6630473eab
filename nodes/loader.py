"""SFV Loader: an SVD-family checkpoint (+ an optional SF-V UNet) -> SFV_MODEL."""

from __future__ import annotations

import os

from ..sfv_core import limits
from ..sfv_core.errors import CheckpointError
from ..sfv_core.runtime import ATTENTION_CHOICES, DTYPE_CHOICES, resolve_runtime
from . import comfy_runtime
from .model import SFVModel, user_errors

SFV_FOLDER = "sfv"  # models/sfv: SF-V UNet weights (what the trainer writes)
# Pickled formats are listed too, so that picking one gets sfv_core's message on why it is refused.
WEIGHT_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
DIFFUSERS_PREFIX = "[diffusers] "
NO_UNET = "none"
NO_LORA = "none"
LORA_FOLDERS = ("loras", SFV_FOLDER)  # ComfyUI's LoRA folder, then ours (what the trainer writes)
COMPILE_SWITCH = {"auto": "auto", "off": "off", "on": "default"}  # the node's switch -> sfv_core's compile mode

comfy_runtime.register_model_folder(SFV_FOLDER)


def _weight_files(kind: str) -> list[str]:
    return [name for name in comfy_runtime.model_files(kind) if name.lower().endswith(WEIGHT_EXTENSIONS)]


def _diffusers_folders() -> dict[str, str]:
    """Listed name -> path of each diffusers folder (one with model_index.json) in models/diffusers."""
    found = {}
    for root in comfy_runtime.model_folders("diffusers"):
        seen: set[tuple[int, int]] = set()  # folders by (device, inode): links are followed, loops are not
        for folder, dirs, files in os.walk(root, followlinks=True):
            try:
                identity = os.stat(folder)
            except OSError:
                dirs[:] = []
                continue
            if (identity.st_dev, identity.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((identity.st_dev, identity.st_ino))
            dirs.sort()  # a folder reached by two paths is listed under the first in name order
            if "model_index.json" in files:
                found.setdefault(DIFFUSERS_PREFIX + os.path.relpath(folder, root), folder)
                dirs[:] = []  # its unet/, vae/ ... are parts of it, not models of their own
    return dict(sorted(found.items()))


def checkpoint_path(name: str) -> str:
    path = comfy_runtime.model_file_path("checkpoints", name)
    if path is None and name.startswith(DIFFUSERS_PREFIX):
        path = _diffusers_folders().get(name)
    if path is None:
        raise CheckpointError(f"checkpoint {name!r} was not found in models/checkpoints or models/diffusers: refresh the node list (press r) and pick one that exists.")
    return path


def sfv_unet_path(name: str) -> str | None:
    if name == NO_UNET:
        return None
    path = comfy_runtime.model_file_path(SFV_FOLDER, name)
    if path is None:
        raise CheckpointError(f"SF-V UNet {name!r} was not found in models/{SFV_FOLDER}: put the file there and refresh (press r), or pick {NO_UNET!r}.")
    return path


def _lora_files() -> list[str]:
    names = {name for kind in LORA_FOLDERS for name in _weight_files(kind)}
    return sorted(names)


def sfv_lora_path(name: str) -> str | None:
    if name == NO_LORA:
        return None
    for kind in LORA_FOLDERS:
        path = comfy_runtime.model_file_path(kind, name)
        if path is not None:
            return path
    raise CheckpointError(f"LoRA {name!r} was not found in models/loras or models/{SFV_FOLDER}: put the file there and refresh (press r), or pick {NO_LORA!r}.")


class SFVLoader:
    DESCRIPTION = (
        "Loads an SVD-family image-to-video model (the original single file from models/checkpoints, or a diffusers "
        "folder from models/diffusers) and, optionally, an SF-V UNet from models/sfv that replaces its UNet for "
        "one-step generation, and an SF-V LoRA merged into that UNet. Weights wait on ComfyUI's offload device and are moved to the GPU by the nodes that need them."
    )
    CATEGORY = "SF-V"
    FUNCTION = "load"
    RETURN_TYPES = ("SFV_MODEL",)
    RETURN_NAMES = ("sfv_model",)
    OUTPUT_TOOLTIPS = ("The model: UNet, temporal VAE and CLIP image encoder, with its dtype and attention settings.",)

    @classmethod
    def INPUT_TYPES(cls):
        checkpoints = _weight_files("checkpoints") + list(_diffusers_folders())
        return {
            "required": {
                "checkpoint": (checkpoints, {"tooltip": "SVD img2vid single file (e.g. svd.safetensors) from models/checkpoints, or a diffusers folder from models/diffusers. Its VAE and CLIP image encoder are used as they are."}),
                "sfv_unet": ([NO_UNET, *_weight_files(SFV_FOLDER)], {"default": NO_UNET, "tooltip": f"SF-V UNet weights from models/{SFV_FOLDER} that replace the checkpoint's UNet (one-step generation). '{NO_UNET}' keeps the checkpoint's own UNet."}),
                "dtype": (list(DTYPE_CHOICES), {"default": "auto", "tooltip": "Weight and compute precision of the UNet and image encoder. auto: bf16 on GPUs that support it, else fp16; fp32 on the CPU. The VAE runs in fp32 next to fp16 (it overflows in fp16)."}),
                "attention": (list(ATTENTION_CHOICES), {"default": "sdpa", "tooltip": "sdpa: PyTorch's fused attention (fast, little memory). eager: plain matmul-softmax (for debugging or odd devices)."}),
            },
            # Optional, so that workflows and API prompts saved before it existed still run.
            "optional": {
                "compile": (list(COMPILE_SWITCH), {"default": "auto", "tooltip": "torch.compile of the UNet and the temporal decoder, once per size (the first run at a new size waits for it; re-runs with a new seed reuse it). auto: on with an NVIDIA GPU, off on the CPU. Falls back to uncompiled, with a warning, where compiling fails (e.g. no Triton)."}),
                "sfv_lora": ([NO_LORA, *_lora_files()], {"default": NO_LORA, "tooltip": f"SF-V LoRA from models/loras or models/{SFV_FOLDER}, merged into the UNet (the checkpoint's, or sfv_unet's) at load: no cost per step. Only LoRAs made for SVD img2vid's UNet fit; others are refused with what they target."}),
                "lora_strength": ("FLOAT", {"default": 1.0, **limits.LORA_STRENGTH.widget(), "step": 0.01, "tooltip": "How much of the LoRA's change is applied: 1 as trained, 0 none, negative subtracts it."}),
            },
        }

    def load(self, checkpoint, sfv_unet, dtype, attention, compile="auto", sfv_lora=NO_LORA, lora_strength=1.0):
        from ..sfv_core.checkpoints import check_sfv_unet, inspect_full_model, load_model, load_sfv_unet
        from ..sfv_core.lora import apply_lora_file, check_lora

        with user_errors():
            limits.LORA_STRENGTH.check(lora_strength, "lora_strength")
            lora_path, unet_path = sfv_lora_path(sfv_lora), sfv_unet_path(sfv_unet)
            runtime = resolve_runtime(comfy_runtime.compute_device(), dtype, "auto", attention, COMPILE_SWITCH[compile])
            # From headers, before minutes of loading: the extra files fit the checkpoint.
            base = inspect_full_model(checkpoint_path(checkpoint))
            if unet_path is not None:
                check_sfv_unet(unet_path, base.unet_config, base.path)
            if lora_path is not None:
                check_lora(lora_path, base)
            storage = comfy_runtime.storage_device()
            model = load_model(checkpoint_path(checkpoint), dtype=runtime.dtype, device=storage)
            if unet_path is not None:
                model = load_sfv_unet(unet_path, model, dtype=runtime.dtype, device=storage)
            if lora_path is not None:
                model = apply_lora_file(model, lora_path, lora_strength)
            return (SFVModel(model, runtime, storage),)
