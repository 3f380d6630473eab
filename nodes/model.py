"""What flows on an SFV_MODEL wire, and how node errors reach the UI."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch

from ..sfv_core.errors import SFVError
from ..sfv_core.models import SVDModel
from ..sfv_core.pipeline import SFVPipeline
from ..sfv_core.runtime import Runtime
from . import comfy_runtime

# ComfyUI budgets the working memory of SVD's UNet at 0.02 MiB per latent pixel (frames x h x w)
# per byte of its dtype (memory_usage_factor 2 with fused attention); SF-V runs the same UNet,
# so asking for the same budget frees as much memory for it as for the native SVD path.
UNET_WORKSPACE_MIB_PER_LATENT_PIXEL_BYTE = 0.02


class SFVParts(torch.nn.ModuleDict):
    """Modules of one part of the model, as one unit for ComfyUI's memory manager (and its log)."""


@contextmanager
def user_errors():
    """Bad input in the graph becomes a plain exception whose message (problem and fix) ComfyUI
    shows in its error box; the server keeps running."""
    try:
        yield
    except SFVError as error:
        raise ValueError(str(error)) from error


class SFVModel:
    """An sfv_core pipeline whose three parts ComfyUI's memory manager may load and unload.

    The weights wait on ComfyUI's offload device; each node asks for the parts it needs
    (`use`), and ComfyUI moves them to the compute device, unloading other models first if
    memory is short, and unloading these when a later node of any pack needs the memory.
    """

    def __init__(self, model: SVDModel, runtime: Runtime, storage: torch.device):
        # sfv_core's one dtype/attention policy, applied where the weights wait; computing
        # happens on runtime.device once ComfyUI has moved the weights there.
        self.pipeline = SFVPipeline(model, dataclasses.replace(runtime, device=storage))
        self.pipeline.runtime = runtime
        vae_parts = {"vae": model.vae}
        if model.native_encoder is not None:
            vae_parts["native_encoder"] = model.native_encoder
        parts = {"unet": {"unet": model.unet}, "vae": vae_parts, "image_encoder": {"image_encoder": model.image_encoder}}
        self.managed = {name: comfy_runtime.manage(SFVParts(modules), runtime.device, storage) for name, modules in parts.items()}

    @property
    def model(self) -> SVDModel:
        return self.pipeline.model

    @property
    def runtime(self) -> Runtime:
        return self.pipeline.runtime

    def use(self, *parts: str, memory_required: int = 0) -> SFVPipeline:
        """Load `parts` ("unet", "vae", "image_encoder") for computing; returns the pipeline."""
        comfy_runtime.load([self.managed[part] for part in parts], memory_required)
        return self.pipeline

    def unet_workspace_bytes(self, latent_shape: tuple[int, ...]) -> int:
        """ComfyUI's working-memory budget for one UNet pass on (clips, frames, 4, h, w)."""
        clips, frames, _channels, height, width = latent_shape
        dtype_bytes = torch.finfo(self.runtime.dtype).bits // 8
        return int(clips * frames * height * width * dtype_bytes * UNET_WORKSPACE_MIB_PER_LATENT_PIXEL_BYTE * 2**20)

    def __repr__(self) -> str:
        return f"SFVModel({self.model.source!r}, {self.runtime.device}, {self.runtime.dtype})"
