"""SFV One-Step Sampler: SFV_MODEL + SFV_CONDITIONING + seed -> LATENT (SVD layout)."""

from __future__ import annotations

from ..sfv_core import limits
from ..sfv_core.errors import InputError
from ..sfv_core.sampling import MAX_STEPS, Conditioning, sampling_levels, sigma_for_denoise
from . import comfy_runtime
from . import latent as latent_layout
from .model import SFVModel, user_errors


def check_fits(sfv_model: SFVModel, conditioning: Conditioning) -> None:
    """A conditioning from another model would fail deep inside the UNet: say so here."""
    config = sfv_model.model.unet.config
    embed_width, latent_channels = conditioning.image_embeds.shape[-1], conditioning.image_latent.shape[1]
    if embed_width != config.cross_attention_dim or latent_channels * 2 != config.in_channels:
        raise InputError(
            f"this conditioning was made by a different model (image embedding {embed_width} wide, latent {latent_channels} channels; "
            f"this UNet takes {config.cross_attention_dim} and {config.in_channels // 2}): connect SFV Image Conditioner to the same SFV Loader as the sampler."
        )


class SFVOneStepSampler:
    DESCRIPTION = (
        "Generates the clips' latents in one UNet pass (SF-V), or in up to 4 passes on SF-V's noise levels. "
        "With a LATENT and denoise below 1 it re-renders an existing clip (SDEdit style); a LATENT's noise mask "
        "(Set Latent Noise Mask) limits that to the masked region, as in KSampler. Outputs a standard "
        "LATENT: raw VAE latents, frames in the batch, clips one after another."
    )
    CATEGORY = "SF-V"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Raw VAE latents (clips x frames, 4, height/8, width/8); decodes with SFV Temporal VAE Decode or the native VAE Decode of an SVD VAE.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sfv_model": ("SFV_MODEL", {"tooltip": "The model from SFV Loader (with an SF-V UNet for one-step results)."}),
                "conditioning": ("SFV_CONDITIONING", {"tooltip": "From SFV Image Conditioner: start images, frame count, size, motion."}),
                "seed": ("INT", {"default": 0, **limits.SEED.widget(), "control_after_generate": True, "tooltip": "Seed of the noise. The same seed gives ComfyUI's KSampler noise for the same latent shape."}),
                "steps": ("INT", {"default": 1, **limits.STEPS.widget(), "tooltip": f"UNet passes. SF-V is trained for 1; 2 to {MAX_STEPS} re-noise to its lower training levels (70.54, 2.27) and refine."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "A clip to re-render (e.g. from SFV VAE Encode), same frames and size as the conditioning. Leave empty to generate from noise."}),
                "denoise": ("FLOAT", {"default": 1.0, **limits.DENOISE.widget(), "step": 0.001, "tooltip": "With a LATENT: how much to change it. 1.0 regenerates; 0.667 and 0.333 start at SF-V's training levels 70.54 and 2.27. Needs a LATENT below 1.0."}),
            },
        }

    def sample(self, sfv_model, conditioning, seed, steps, latent=None, denoise=1.0):
        with user_errors():
            check_fits(sfv_model, conditioning)
            sampling_levels(steps, sigma_for_denoise(denoise))  # before the UNet is moved to the GPU
            if latent is None and denoise != 1.0:
                raise InputError("denoise below 1.0 needs a latent clip to start from: connect a LATENT (e.g. from SFV VAE Encode), or set denoise to 1.0.")
            init = None if latent is None else latent_layout.unpack_like(latent, conditioning.latent_shape)
            mask = None if latent is None else latent_layout.noise_mask(latent, conditioning.latent_shape)
            pipeline = sfv_model.use("unet", memory_required=sfv_model.unet_workspace_bytes(conditioning.latent_shape))
            progress = comfy_runtime.progress_bar(steps)

            def on_step(_index):
                progress.update(1)
                comfy_runtime.check_interrupted()

            comfy_runtime.check_interrupted()
            latents = pipeline.sample(conditioning, seed, steps, init, denoise, callback=on_step, mask=mask)
        return (latent_layout.pack(latents),)

