"""Loading and writing SVD-family weights, offline, safetensors only.

Formats read:
- the original single file (`svd.safetensors`, what ComfyUI users keep in models/checkpoints);
- a diffusers folder (`unet/`, `vae/`, `image_encoder/`, each with config.json + safetensors);
- an SF-V UNet file (diffusers or SGM names) that replaces the UNet of a loaded model.

Loading is strict and lean: configs are inferred from tensor SHAPES in the header, the
modules are built on the meta device, every name and shape is checked before any tensor is
read, then tensors are read one at a time straight into the target dtype and assigned into
the modules (about 1x the model in memory). Every failure a user can cause raises
`CheckpointError` with a message naming what was found and what is expected.

What a single file may hold besides the model parts (e.g. `denoiser.*`, `model_ema.*`, the
2D decoder of the conditioning autoencoder) is not used for inference: it is ignored and
listed in `SVDModel.notes`.

One module per job: headers (safetensors headers and tensors), identify (what a file is),
shapes (configs from shapes), layout (where the parts live), strict (checked meta-device
loading), loading (the formats and the reading API), writing.
"""

from .headers import PICKLE_SUFFIXES, TensorEntry, Weights, read_safetensors_header
from .identify import detect
from .loading import CheckpointInfo, check_sfv_unet, inspect_checkpoint, inspect_full_model, load_model, load_sfv_unet, reading_unet_state
from .shapes import infer_configs, infer_image_encoder_config, infer_unet_config_diffusers, infer_unet_config_sgm, infer_vae_config
from .writing import model_to_single_file_state_dict, save_diffusers_folder, save_single_file, save_unet_file

__all__ = [
    "PICKLE_SUFFIXES", "TensorEntry", "Weights", "read_safetensors_header", "detect", "CheckpointInfo", "check_sfv_unet", "inspect_checkpoint", "inspect_full_model",
    "load_model", "load_sfv_unet", "reading_unet_state", "infer_configs", "infer_image_encoder_config", "infer_unet_config_diffusers",
    "infer_unet_config_sgm", "infer_vae_config", "model_to_single_file_state_dict", "save_diffusers_folder",
    "save_single_file", "save_unet_file",
]
