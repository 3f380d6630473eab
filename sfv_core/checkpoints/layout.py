"""Where the model parts live in each format this package reads and writes."""

from __future__ import annotations

from ..convert import CLIP_ROOT, CONDITIONING_ENCODER_ROOT, FIRST_STAGE_ROOT, UNET_ROOT

# Parts of the single file this loader reads; anything else is ignored (and noted).
_COND_ENCODER = CONDITIONING_ENCODER_ROOT + "encoder."
_COND_QUANT_CONV = CONDITIONING_ENCODER_ROOT + "quant_conv."
_NATIVE_ENCODER = FIRST_STAGE_ROOT + "encoder."
_SINGLE_FILE_ROOTS = (UNET_ROOT, FIRST_STAGE_ROOT, CLIP_ROOT, _COND_ENCODER, _COND_QUANT_CONV)

_DIFFUSERS_PARTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "image_encoder": "model"}
_NATIVE_ENCODER_FOLDER = "native_encoder"  # our addition to the diffusers layout (see save_diffusers_folder)
