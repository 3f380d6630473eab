"""ComfyUI adapters of sfv_core: each node declares its inputs, calls sfv_core, wraps the outputs."""

from .conditioner import SFVImageConditioner
from .extend import SFVExtendClip
from .loader import SFVLoader
from .sampler import SFVOneStepSampler
from .vae import SFVTemporalVAEDecode, SFVVAEEncode

NODE_CLASS_MAPPINGS = {
    "SFVLoader": SFVLoader,
    "SFVImageConditioner": SFVImageConditioner,
    "SFVOneStepSampler": SFVOneStepSampler,
    "SFVTemporalVAEDecode": SFVTemporalVAEDecode,
    "SFVVAEEncode": SFVVAEEncode,
    "SFVExtendClip": SFVExtendClip,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SFVLoader": "SFV Loader",
    "SFVImageConditioner": "SFV Image Conditioner",
    "SFVOneStepSampler": "SFV One-Step Sampler",
    "SFVTemporalVAEDecode": "SFV Temporal VAE Decode",
    "SFVVAEEncode": "SFV VAE Encode",
    "SFVExtendClip": "SFV Extend Clip",
}
