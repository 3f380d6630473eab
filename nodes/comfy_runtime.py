"""The one module that reaches ComfyUI's own modules (folder_paths, comfy.*).

Inside ComfyUI it hands the nodes ComfyUI's model folders, device, memory manager, progress
bar and Cancel button. Without ComfyUI (tests, benchmarks, plain Python) the same functions
fall back to small stand-ins: model folders under one root (`set_models_root`), the device
sfv_core would pick, weights kept on that device, a silent progress bar, no Cancel.
"""

from __future__ import annotations

import os

import torch

try:
    import comfy.model_management as model_management
    import comfy.model_patcher as model_patcher
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:  # not running inside ComfyUI
    model_management = model_patcher = comfy_utils = folder_paths = None

IN_COMFYUI = folder_paths is not None

_fallback_models_root = os.path.join(os.getcwd(), "models")


# ---- model folders -------------------------------------------------------------------------


def set_models_root(path: str | os.PathLike) -> None:
    """Without ComfyUI: the folder that plays ComfyUI's models/ (checkpoints/, diffusers/, sfv/)."""
    global _fallback_models_root
    if IN_COMFYUI:
        raise RuntimeError("inside ComfyUI the model folders are ComfyUI's (extra_model_paths.yaml)")
    _fallback_models_root = os.fspath(path)


def register_model_folder(kind: str) -> None:
    """Add models/<kind> to ComfyUI's search paths, appending so that user-configured paths stay."""
    if IN_COMFYUI:
        folder_paths.add_model_folder_path(kind, os.path.join(folder_paths.models_dir, kind))


def model_folders(kind: str) -> list[str]:
    if IN_COMFYUI:
        try:
            return folder_paths.get_folder_paths(kind)
        except KeyError:
            return []
    return [os.path.join(_fallback_models_root, kind)]


def model_files(kind: str) -> list[str]:
    """Files under the model folders of `kind`, as names relative to their folder, sorted."""
    if IN_COMFYUI:
        return folder_paths.get_filename_list(kind)
    names = set()
    for folder in model_folders(kind):
        for root, _dirs, files in os.walk(folder, followlinks=True):
            names.update(os.path.relpath(os.path.join(root, name), folder) for name in files)
    return sorted(names)


def model_file_path(kind: str, name: str) -> str | None:
    if IN_COMFYUI:
        return folder_paths.get_full_path(kind, name)
    for folder in model_folders(kind):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


# ---- devices and memory --------------------------------------------------------------------


def compute_device() -> torch.device:
    """Where the nodes compute: ComfyUI's device (honours --cpu, --directml, ...)."""
    if IN_COMFYUI:
        return model_management.get_torch_device()
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def storage_device() -> torch.device:
    """Where weights wait between uses: ComfyUI's offload device (the CPU unless --highvram)."""
    if IN_COMFYUI:
        return model_management.unet_offload_device()
    return compute_device()


class _Kept:
    """Without ComfyUI: modules that simply stay on their device."""

    def __init__(self, modules: torch.nn.Module, load_device: torch.device):
        self.model, self.load_device = modules, load_device


def manage(modules: torch.nn.Module, load_device: torch.device, offload_device: torch.device):
    """Hand `modules` (e.g. an nn.ModuleDict) to ComfyUI's memory manager.

    The ModuleDict is a container of the diffusers / transformers modules: ComfyUI's
    ModelPatcher writes a `device` attribute on what it manages, which those classes expose
    as a read-only property.
    """
    if IN_COMFYUI:
        return model_patcher.ModelPatcher(modules, load_device=load_device, offload_device=offload_device)
    return _Kept(modules, load_device)


def load(managed: list, memory_required: int = 0) -> None:
    """Bring managed modules onto the compute device before use.

    Inside ComfyUI this is `load_models_gpu`: it first unloads other models (ours included)
    to the offload device until `memory_required` bytes of working memory and the weights fit,
    and records these as loaded so that a later node can unload them in turn. Whole modules
    only (force_full_load): diffusers layers cannot run with part of their weights offloaded.
    """
    if IN_COMFYUI:
        model_management.load_models_gpu(managed, memory_required=memory_required, force_full_load=True)
        return
    for item in managed:
        first = next(item.model.parameters())
        if first.device != item.load_device:
            item.model.to(item.load_device)


# ---- progress and Cancel -------------------------------------------------------------------


class _SilentProgress:
    def __init__(self, total: int):
        self.total, self.current = total, 0

    def update_absolute(self, value: int, total: int | None = None) -> None:
        self.total = self.total if total is None else total
        self.current = min(value, self.total)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)


def progress_bar(total: int):
    """The node's progress bar in the UI (`update(n)`, `update_absolute(value, total)`)."""
    if IN_COMFYUI:
        return comfy_utils.ProgressBar(total)
    return _SilentProgress(total)


def check_interrupted() -> None:
    """Raise ComfyUI's interruption if the user pressed Cancel."""
    if IN_COMFYUI:
        model_management.throw_exception_if_processing_interrupted()
