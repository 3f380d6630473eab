"""SFV Temporal VAE Decode (LATENT -> IMAGE) and SFV VAE Encode (IMAGE frames -> LATENT)."""

from __future__ import annotations

import torch

from ..sfv_core import limits
from ..sfv_core.conditioning import check_video_size, encode_image_latent_native, to_rgb
from ..sfv_core.decoding import decode_bytes_per_frame, plan_chunks
from ..sfv_core.errors import CheckpointError, InputError
from ..sfv_core.tiny_decoder import may_be_tiny_decoder_file
from . import comfy_runtime
from . import latent as latent_layout
from .loader import SFV_FOLDER
from .model import user_errors

FULL_DECODER = "full"
# Tiny decoders (what `python -m sfv_core train-decoder` writes) are listed from these folders
# as "folder/name": .safetensors files, less those whose header says they are something else
# (SF-V UNets, TAESD's files).
TINY_DECODER_FOLDERS = ("vae_approx", SFV_FOLDER)


def tiny_decoder_choices() -> list[str]:
    choices = []
    for kind in TINY_DECODER_FOLDERS:
        for name in comfy_runtime.model_files(kind):
            if name.lower().endswith(".safetensors") and may_be_tiny_decoder_file(comfy_runtime.model_file_path(kind, name)):
                choices.append(f"{kind}/{name}")
    return choices


def tiny_decoder_path(choice: str) -> str:
    kind, _, name = choice.partition("/")
    path = comfy_runtime.model_file_path(kind, name) if kind in TINY_DECODER_FOLDERS else None
    if path is None:
        raise CheckpointError(f"tiny decoder {choice!r} was not found in models/vae_approx or models/{SFV_FOLDER}: refresh the node list (press r) and pick one that exists, or {FULL_DECODER!r}.")
    return path


class SFVTemporalVAEDecode:
    DESCRIPTION = (
        "Decodes a LATENT with SVD's temporal VAE decoder, a fixed number of frames at a time, so the video is the "
        "same on every card, or with a tiny decoder distilled from it (many times faster, less fine detail). Takes the "
        "SFV sampler's LATENT or one from native SVD nodes. Outputs all clips' frames one after another."
    )
    CATEGORY = "SF-V"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("Frames (clips x frames, height, width, 3), clip after clip: feed SaveAnimatedWEBP or CreateVideo.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sfv_model": ("SFV_MODEL", {"tooltip": "The model from SFV Loader (its VAE decodes)."}),
                "samples": ("LATENT", {"tooltip": "Raw SVD latents, frames in the batch: from SFV One-Step Sampler or a native SVD KSampler."}),
                "frames_per_chunk": ("INT", {"default": 14, **limits.DECODE_CHUNK.widget(), "tooltip": "Frames decoded together (0: a whole clip). The temporal layers mix frames only inside a chunk; fewer frames use less memory (about 1.2 GB per 1024x576 frame in bf16)."}),
                "overlap": ("INT", {"default": 0, **limits.DECODE_OVERLAP.widget(), "tooltip": "Frames shared by consecutive chunks and cross-faded, to hide seams between chunks. Below frames_per_chunk."}),
                "frames_per_clip": ("INT", {"default": 0, **limits.FRAMES_PER_CLIP.widget(), "tooltip": "Frames of one clip; a number here wins over what the LATENT says. 0: the count the SFV sampler stored in the LATENT (while native batch nodes have kept it true), else the whole batch as one clip."}),
            },
            "optional": {
                "decoder": ([FULL_DECODER, *tiny_decoder_choices()], {"default": FULL_DECODER, "tooltip": f"'{FULL_DECODER}': the model's temporal VAE decoder. Or a tiny decoder distilled from it (python -m sfv_core train-decoder) from models/vae_approx or models/{SFV_FOLDER}: far faster and lighter, loses fine detail; it streams frames_per_chunk frames at a time with no seams (overlap does not apply)."}),
            },
        }

    def decode(self, sfv_model, samples, frames_per_chunk, overlap, frames_per_clip, decoder=FULL_DECODER):
        with user_errors():
            latents = latent_layout.unpack(samples, frames_per_clip)
            clips, frames, channels, height, width = latents.shape
            vae = sfv_model.model.vae
            if channels != vae.config.latent_channels:
                raise InputError(f"the LATENT has {channels} channels but SVD's VAE takes {vae.config.latent_channels}: connect a latent of an SVD-family model.")
            chunk = min(frames_per_chunk or frames, frames)
            if decoder == FULL_DECODER:
                chunks = clips * len(plan_chunks(frames, chunk, overlap))
                pipeline = sfv_model.use("vae", memory_required=decode_bytes_per_frame(vae, height * 8, width * 8) * chunk)
                tiny = None
            else:  # a few MB of weights: loaded per run, outside ComfyUI's memory manager
                chunks, overlap = clips * len(plan_chunks(frames, chunk)), 0
                pipeline = sfv_model.pipeline
                tiny = pipeline.load_decoder(tiny_decoder_path(decoder))
            progress = comfy_runtime.progress_bar(chunks)

            def on_chunk(done, total):
                progress.update_absolute(done, total)
                comfy_runtime.check_interrupted()

            comfy_runtime.check_interrupted()
            video = pipeline.decode(latents, chunk, overlap, callback=on_chunk, decoder=tiny)
        return (video.reshape(clips * frames, *video.shape[2:]),)


class SFVVAEEncode:
    DESCRIPTION = (
        "Encodes video frames into a LATENT with the SFV model's own VAE encoder (the first-stage encoder that "
        "ComfyUI's VAE Encode of an SVD checkpoint uses), for re-rendering a clip with SFV One-Step Sampler. "
        "Saves loading the checkpoint a second time just for its VAE."
    )
    CATEGORY = "SF-V"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Raw VAE latents (frames, 4, height/8, width/8) of one clip.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sfv_model": ("SFV_MODEL", {"tooltip": "The model from SFV Loader (its VAE encodes)."}),
                "frames": ("IMAGE", {"tooltip": "The frames of one clip, already at the conditioner's width and height (e.g. through Upscale Image, crop center)."}),
            },
            "optional": {
                "conditioning": ("SFV_CONDITIONING", {"tooltip": "The conditioning the sampler will use: when connected, the frames are checked against its frame count and size before anything is encoded (a too-short video is named here, not at the sampler)."}),
            },
        }

    def encode(self, sfv_model, frames, conditioning=None):
        with user_errors():
            frames = to_rgb(frames)
            count, height, width = frames.shape[:3]
            check_video_size(width, height, count)
            if conditioning is not None:
                latent_layout.check_frames_fit(count, height, width, conditioning.latent_shape)
            model = sfv_model.model
            encoder = model.native_encoder if model.native_encoder is not None else model.vae.encoder
            sfv_model.use("vae", memory_required=decode_bytes_per_frame(model.vae, height, width))
            progress = comfy_runtime.progress_bar(count)
            latents = []
            for frame in frames.split(1):  # one frame at a time: the 2D encoder needs no neighbours
                pixels = frame.movedim(-1, 1).to(sfv_model.runtime.device)
                latents.append(encode_image_latent_native(encoder, pixels, 0.0, None).cpu())
                progress.update(1)
                comfy_runtime.check_interrupted()
        return (latent_layout.pack(torch.cat(latents).unsqueeze(0)),)
