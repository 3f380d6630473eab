"""SFV Image Conditioner: start image(s) -> SFV_CONDITIONING (+ the resized start images)."""

from __future__ import annotations

from ..sfv_core import limits, memory
from ..sfv_core.conditioning import RESIZE_MODES, VARIANTS, check_video_size
from ..sfv_core.errors import SFVError
from ..sfv_core.models import check_unet_can_run
from . import comfy_runtime
from .model import user_errors


class SFVImageConditioner:
    DESCRIPTION = (
        "Encodes start images for SF-V: the CLIP image embedding, the VAE latent of the noise-augmented frame and "
        "the fps / motion / augmentation micro-conditioning. One clip per image of the batch. Has no seed: its "
        "augmentation noise is seeded internally, so a new sampler seed does not re-run it."
    )
    CATEGORY = "SF-V"
    FUNCTION = "condition"
    RETURN_TYPES = ("SFV_CONDITIONING", "IMAGE")
    RETURN_NAMES = ("conditioning", "start_image")
    OUTPUT_TOOLTIPS = (
        "What the sampler generates from: one clip per start image, with the frame count and size set here.",
        "The start images as the model sees them: resized to width x height (batch, height, width, 3).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sfv_model": ("SFV_MODEL", {"tooltip": "The model from SFV Loader."}),
                "image": ("IMAGE", {"tooltip": "Start image(s): the first frame of each clip. A batch of N images makes N clips."}),
                "width": ("INT", {"default": 1024, **limits.WIDTH.widget(), "step": 8, "tooltip": "Video width in pixels, a multiple of 8, at least 64. SVD was trained at 1024x576."}),
                "height": ("INT", {"default": 576, **limits.HEIGHT.widget(), "step": 8, "tooltip": "Video height in pixels, a multiple of 8, at least 64."}),
                "frames": ("INT", {"default": 14, **limits.FRAMES.widget(), "tooltip": "Frames per clip. SVD img2vid and SF-V were trained on 14."}),
                "fps": ("INT", {"default": 7, **limits.FPS.widget(), "tooltip": "Frame rate the model is told (fps - 1 goes in, as in training at 7). Use the same number when saving the video."}),
                "motion_bucket_id": ("INT", {"default": 127, **limits.MOTION_BUCKET.widget(), "tooltip": "How much motion: higher moves more. Trained around 127."}),
                "augmentation": ("FLOAT", {"default": 0.02, **limits.AUGMENTATION.widget(), "step": 0.01, "tooltip": "Noise added to the start frame before VAE encoding (0.02 in training). More lets the video drift further from the image."}),
                "resize": (list(RESIZE_MODES), {"default": "crop", "tooltip": "How the image is fitted to width x height. crop: fill the frame, trimming the long side; pad: fit inside with black bars; stretch: squash."}),
                "variant": (list(VARIANTS), {"default": "reference", "tooltip": "reference: preprocessing as SVD was trained (and as diffusers samples). comfyui_native: exactly ComfyUI's SVD_img2vid_Conditioning, to match the native SVD path."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None):
        if width is None or height is None:  # linked from another node: checked when the node runs
            return True
        try:
            check_video_size(width, height, 1)
        except SFVError as error:
            return str(error)
        return True

    def condition(self, sfv_model, image, width, height, frames, fps, motion_bucket_id, augmentation, resize, variant):
        with user_errors():
            check_video_size(width, height, frames)
            clips = image.shape[0] if image.ndim == 4 else 1
            check_unet_can_run(sfv_model.model.unet.config, width, height, frames, clips)
            vae = sfv_model.model.vae
            workspace = memory.encode_bytes(vae.config, sfv_model.runtime.vae_dtype, clips, height, width)
            pipeline = sfv_model.use("image_encoder", "vae", memory_required=workspace)
            conditioning, start_images = pipeline.condition(
                image, width=width, height=height, num_frames=frames, fps=fps, motion_bucket_id=motion_bucket_id,
                augmentation=augmentation, variant=variant, resize=resize,
            )
        comfy_runtime.check_interrupted()
        return (conditioning, start_images)
