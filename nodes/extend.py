"""SFV Extend Clip: a clip (IMAGE, + its LATENT if at hand) -> the same clip, longer."""

from __future__ import annotations

from ..sfv_core import extend, limits
from ..sfv_core.conditioning import check_video_size, to_rgb
from ..sfv_core.decoding import decode_bytes_per_frame
from ..sfv_core.errors import InputError, SFVError
from . import comfy_runtime
from . import latent as latent_layout
from .model import user_errors


def settings_of(clip_frames, overlap, overlap_denoise, crossfade, steps, condition_frame) -> extend.ExtendSettings:
    return extend.ExtendSettings(clip_frames=clip_frames, overlap=overlap, overlap_denoise=overlap_denoise, crossfade=crossfade, steps=steps, condition_frame=condition_frame)


def carried_latents(latent, frames, latent_channels: int):
    """The LATENT's frames as one run (1, n, 4, h, w), checked against the clip's size and length."""
    if latent is None:
        return None
    samples = latent_layout.unpack(latent)
    samples = samples.reshape(1, -1, *samples.shape[2:])
    count, height, width = frames.shape[1:4]
    latent_size = (samples.shape[-1] * 8, samples.shape[-2] * 8)
    if latent_size != (width, height) or samples.shape[1] > count or samples.shape[2] != latent_channels:
        raise InputError(
            f"the LATENT holds {samples.shape[1]} frames of {samples.shape[2]}-channel latents of a {latent_size[0]}x{latent_size[1]} video, but the clip is "
            f"{count} frames of {width}x{height} and SVD's VAE has {latent_channels} channels: connect the LATENT this clip was decoded from "
            "(the sampler's, or the previous SFV Extend Clip's), or leave it empty."
        )
    return samples


class SFVExtendClip:
    DESCRIPTION = (
        "Makes a clip longer with more one-step SF-V clips. Each new clip is conditioned on a frame of the clip (see "
        "condition_frame); its first 'overlap' frames start from the clip's last ones re-noised to 'overlap_denoise', and "
        "the overlap is cross-faded. "
        "Chain several to build long videos: frames -> clip, latent -> latent."
    )
    CATEGORY = "SF-V"
    FUNCTION = "extend"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latent")
    OUTPUT_TOOLTIPS = (
        "The longer clip: the input frames, then new_frames more (frames, height, width, 3).",
        "Raw latents of the longer clip's last frames (all of them when a LATENT came in): connect to the next SFV Extend Clip.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        defaults = extend.ExtendSettings()
        return {
            "required": {
                "sfv_model": ("SFV_MODEL", {"tooltip": "The model from SFV Loader (with an SF-V UNet for one-step clips)."}),
                "clip": ("IMAGE", {"tooltip": "The clip to extend (frames, height, width, 3): from SFV Temporal VAE Decode or a previous SFV Extend Clip. Its size is the new frames' size."}),
                "new_frames": ("INT", {"default": defaults.new_frames_per_clip, "min": 1, "max": limits.FRAMES.high, "tooltip": "Frames to add: a multiple of clip_frames - overlap (each clip adds that many)."}),
                "clip_frames": ("INT", {"default": defaults.clip_frames, "min": 2, "max": limits.FRAMES.high, "tooltip": "Frames of each clip the model makes, the overlap included. SVD and SF-V were trained on 14."}),
                "overlap": ("INT", {"default": defaults.overlap, "min": 0, "max": limits.FRAMES.high - 1, "tooltip": "Frames each new clip shares with the one before, carried into it and cross-faded. Below clip_frames."}),
                "seed": ("INT", {"default": 0, **limits.SEED.widget(), "control_after_generate": True, "tooltip": "Seed of the first new clip; the next ones use seed + 1, seed + 2 ..."}),
                "motion_bucket_id": ("INT", {"default": 127, **limits.MOTION_BUCKET.widget(), "tooltip": "How much motion: higher moves more. Trained around 127."}),
                "fps": ("INT", {"default": 7, **limits.FPS.widget(), "tooltip": "Frame rate the model is told; the same as the conditioner's."}),
                "augmentation": ("FLOAT", {"default": 0.02, **limits.AUGMENTATION.widget(), "step": 0.01, "tooltip": "Noise added to each new clip's condition frame before it is encoded, as in the conditioner."}),
                "overlap_denoise": ("FLOAT", {"default": round(defaults.overlap_denoise, 3), "min": 0.001, "max": 1.0, "step": 0.001, "tooltip": "How much the carried frames are re-noised: 0.667 is SF-V's level 70.54 (measured best), 0.333 is 2.27 (keeps them nearly as they are), 1.0 carries only the condition frame."}),
                "crossfade": (list(extend.CROSSFADES), {"default": defaults.crossfade, "tooltip": "Blend the overlap as decoded frames (pixel) or as latents before decoding (latent)."}),
                "steps": ("INT", {"default": 1, **limits.STEPS.widget(), "tooltip": "UNet passes per clip, on SF-V's levels below the overlap's."}),
                "condition_frame": (list(extend.CONDITION_FRAMES), {"default": defaults.condition_frame, "tooltip": "The frame each new clip is conditioned on: the clip's last frame, or the first frame it shares with the new clip (the one the new clip's first frame is carried from)."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "The clip's LATENT (from the sampler or the previous SFV Extend Clip): the overlap is carried from it exactly. Empty: the clip's last frames are encoded."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, new_frames=None, clip_frames=None, overlap=None, overlap_denoise=None, crossfade=None, steps=None, condition_frame=None):
        values = (new_frames, clip_frames, overlap, overlap_denoise, crossfade, steps, condition_frame)
        if any(value is None for value in values):  # a linked input: checked when the node runs
            return True
        try:
            extend.clips_for_new_frames(new_frames, settings_of(*values[1:]))
        except SFVError as error:
            return str(error)
        return True

    def extend(self, sfv_model, clip, new_frames, clip_frames, overlap, seed, motion_bucket_id, fps, augmentation, overlap_denoise, crossfade, steps, condition_frame, latent=None):
        with user_errors():
            settings = settings_of(clip_frames, overlap, overlap_denoise, crossfade, steps, condition_frame)
            clips = extend.clips_for_new_frames(new_frames, settings)
            frames = to_rgb(clip).unsqueeze(0)
            height, width = frames.shape[2:4]
            check_video_size(width, height, frames.shape[1])
            extend.check_clip_length(frames.shape[1], settings)
            carried = carried_latents(latent, frames, sfv_model.model.vae.config.latent_channels)
            shape = (1, clip_frames, 4, height // 8, width // 8)
            memory = max(sfv_model.unet_workspace_bytes(shape), decode_bytes_per_frame(sfv_model.model.vae, height, width) * clip_frames)
            pipeline = sfv_model.use("unet", "vae", "image_encoder", memory_required=memory)
            progress = comfy_runtime.progress_bar(clips)

            def on_clip(done, total):
                progress.update_absolute(done, total)
                comfy_runtime.check_interrupted()

            comfy_runtime.check_interrupted()
            condition = dict(fps=fps, motion_bucket_id=motion_bucket_id, augmentation=augmentation)
            longer, latents = extend.extend_clip(pipeline, frames, carried, new_frames, seed, settings, condition, progress=on_clip)
        return (longer[0], latent_layout.pack(latents))
