"""Long clips by extension: each one-step clip starts where the one before ends.

Clip k+1 is conditioned on clip k's last frame, re-encoded as the image condition exactly as a
start image is (`SFVPipeline.condition`). Its first `overlap` latent frames start from clip k's
last ones re-noised to the level of `overlap_denoise` (SDEdit: the init-latent path of
`sampling.sample`), the rest from noise; then the overlap is cross-faded into clip k's frames.
Each clip is decoded by the one decode stage (`SFVPipeline.decode`) as soon as it is made and
handed on, so memory holds one clip whatever the length. The command line streams the pieces
to the video writer; the SFV Extend Clip node gathers them into the longer IMAGE.

Clips are batched like everywhere in sfv_core: tensors lead with (clips, frames, ...), one
video per start image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from . import decoding, sampling
from .conditioning import encode_image_latent
from .errors import InputError

CROSSFADES = ("pixel", "latent")
# The image condition of clip k+1: clip k's last frame, or the first frame the two clips share
# (what the new clip's first frame is carried from; SVD makes a clip's first frame its condition).
CONDITION_FRAMES = ("last", "first_shared")
# Chosen from the miniature's measurements (benchmarks/bench_extend.py, README "Long clips"):
# the only method that met every bar with the least drift. 2/3 re-noises the carried frames
# to SF-V's training level 70.54 (2.27 keeps them but leaves the new frames noisy; a latent
# cross-fade decodes into a dark frame; the last frame of a decoded clip is its worst).
DEFAULT_OVERLAP_DENOISE = 2 / 3
DEFAULT_CROSSFADE = "pixel"
DEFAULT_OVERLAP = 4
DEFAULT_CONDITION_FRAME = "first_shared"


@dataclass(frozen=True)
class ExtendSettings:
    """How each clip of a long video is made.

    clip_frames: frames of every clip the model makes (the conditioner's frame count).
    overlap: frames a clip shares with the one before; each clip adds clip_frames - overlap.
    overlap_denoise: level the carried overlap is re-noised to, on the sampler's denoise scale
        (1/3: 2.27, 2/3: 70.54, 1: from noise, i.e. the last frame is all that is carried).
    crossfade: where the overlap is blended, "pixel" (decoded frames) or "latent".
    steps: UNet passes per clip, on SF-V's levels below the start level.
    condition_frame: which frame of clip k conditions clip k+1 (CONDITION_FRAMES).
    """

    clip_frames: int = 14
    overlap: int = DEFAULT_OVERLAP
    overlap_denoise: float = DEFAULT_OVERLAP_DENOISE
    crossfade: str = DEFAULT_CROSSFADE
    steps: int = 1
    condition_frame: str = DEFAULT_CONDITION_FRAME

    @property
    def new_frames_per_clip(self) -> int:
        return self.clip_frames - self.overlap


def check_settings(settings: ExtendSettings) -> None:
    if settings.clip_frames < 2:
        raise InputError(f"clips to extend with need at least 2 frames, got {settings.clip_frames}.")
    if not 0 <= settings.overlap < settings.clip_frames:
        raise InputError(
            f"overlap {settings.overlap} must be between 0 and the clip's frames - 1 ({settings.clip_frames - 1}): "
            "each clip has to add at least one new frame. Use a smaller overlap or longer clips."
        )
    if settings.crossfade not in CROSSFADES:
        raise InputError(f"crossfade must be one of {CROSSFADES}, got {settings.crossfade!r}.")
    if settings.condition_frame not in CONDITION_FRAMES:
        raise InputError(f"condition frame must be one of {CONDITION_FRAMES}, got {settings.condition_frame!r}.")
    sampling.sampling_levels(settings.steps, sampling.sigma_for_denoise(settings.overlap_denoise))


def clips_for_new_frames(new_frames: int, settings: ExtendSettings) -> int:
    """How many clips add exactly `new_frames` frames; an error naming the nearest counts that work."""
    check_settings(settings)
    step = settings.new_frames_per_clip
    if new_frames <= 0:
        raise InputError(f"new frames must be at least 1, got {new_frames}: each clip adds {step} (clip frames {settings.clip_frames} - overlap {settings.overlap}).")
    if new_frames % step:
        lower, upper = new_frames // step * step, (new_frames // step + 1) * step
        options = " or ".join(f"{n} ({n // step} clip{'s' if n // step > 1 else ''})" for n in (lower, upper) if n > 0)
        raise InputError(
            f"{new_frames} new frames cannot be made: each clip of {settings.clip_frames} frames with overlap {settings.overlap} adds {step}. "
            f"Use {options}, or change the overlap or clip frames."
        )
    return new_frames // step


def clips_for_length(length: int, settings: ExtendSettings) -> int:
    """Clips (the first one included) that make a video of exactly `length` frames."""
    check_settings(settings)
    if length < settings.clip_frames:
        if length < 1:
            raise InputError(f"length {length} makes no frames: give a length of at least {settings.clip_frames} (one clip).")
        raise InputError(f"length {length} is shorter than one clip of {settings.clip_frames} frames: set --frames {length} without --length, or a length of at least {settings.clip_frames}.")
    step = settings.new_frames_per_clip
    if (length - settings.clip_frames) % step:
        lower = settings.clip_frames + (length - settings.clip_frames) // step * step
        raise InputError(
            f"length {length} cannot be made from clips of {settings.clip_frames} frames with overlap {settings.overlap} "
            f"(the first clip gives {settings.clip_frames}, each next one {step} more): use --length {lower} or {lower + step}, "
            "or change --overlap or --frames."
        )
    return 1 + (length - settings.clip_frames) // step


def check_clip_length(frame_count: int, settings: ExtendSettings) -> None:
    """A clip to extend holds at least the frames the next clip carries over (and one frame)."""
    if frame_count < max(settings.overlap, 1):
        raise InputError(f"the clip has {frame_count} frames, fewer than the overlap {settings.overlap}: use an overlap of at most {frame_count}.")


@dataclass
class Tail:
    """What clip k hands to clip k+1.

    latents: (clips, overlap, 4, h, w) raw latents of its last frames, carried into the next clip.
    frames: (clips, overlap, H, W, 3) its last decoded frames, held back until they are cross-faded.
    last_frame: (clips, H, W, 3), its last frame.
    """

    latents: torch.Tensor
    frames: torch.Tensor
    last_frame: torch.Tensor


def split_clip(latents: torch.Tensor, frames: torch.Tensor, overlap: int) -> tuple[torch.Tensor, torch.Tensor, Tail]:
    """A finished clip -> (its frames that are final now, their latents, the tail held for the next clip)."""
    keep = frames.shape[1] - overlap
    return frames[:, :keep], latents[:, :keep], Tail(latents[:, keep:], frames[:, keep:], frames[:, -1])


@torch.no_grad()
def encode_frames(model, frames: torch.Tensor) -> torch.Tensor:
    """Decoded frames (clips, n, H, W, 3) in [0, 1] -> raw latents (clips, n, 4, h, w): the
    posterior mode, as the trainer encodes clips (to carry a clip that came as pixels)."""
    flat = frames.flatten(0, 1).movedim(-1, 1) * 2.0 - 1.0
    return encode_image_latent(model.vae, flat, 0.0, None).cpu().unflatten(0, frames.shape[:2])


def tail_of(model, frames: torch.Tensor, latents: torch.Tensor | None, overlap: int) -> Tail:
    """The tail of a clip given as frames (clips, n, H, W, 3), and the raw latents of its last
    frames if they are known (else the overlap frames are encoded)."""
    carried = frames[:, frames.shape[1] - overlap :]
    if latents is None:
        clips, _, height, width = frames.shape[:4]
        empty = frames.new_zeros((clips, 0, model.vae.config.latent_channels, height // 8, width // 8))
        latents = encode_frames(model, carried) if overlap else empty
    return Tail(latents[:, latents.shape[1] - overlap :].float(), carried, frames[:, -1])


def fade_in(count: int) -> torch.Tensor:
    """Weights of the incoming clip over an overlap of `count` frames: the decoder's linear cross-fade."""
    return decoding.blend_weights([(0, count), (0, count)])[1]


def blend(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Cross-fade two (clips, count, ...) runs of frames or latents from `old` into `new`."""
    weight = fade_in(old.shape[1]).reshape(1, -1, *([1] * (old.ndim - 2))).to(old)
    return old * (1 - weight) + new * weight


# The new frames' starting noise comes from its own stream, apart from the sampler's (same seed).
FILL_SEED_MASK = 0x9E3779B97F4A7C15


def initial_latents(tail: Tail, settings: ExtendSettings, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Raw init latents of the next clip: the carried overlap, then unit-variance noise.

    `sampling.sample` adds sigma * eps to all of it, so the new frames start at variance
    1 + sigma^2: pure noise at that level for latents of std 1 (EDM's sigma_data).
    """
    fresh = sampling.draw_noise((shape[0], shape[1] - settings.overlap, *shape[2:]), sampling.seeded_generator(seed ^ FILL_SEED_MASK))
    return torch.cat([tail.latents, sampling.to_raw_latent(fresh)], dim=1)


def next_clip(pipe, tail: Tail, seed: int, settings: ExtendSettings, condition_settings: dict, decode_settings: dict) -> tuple[torch.Tensor, torch.Tensor, Tail]:
    """Make the clip that continues `tail`: (its frames that are final now, their latents, its tail).

    The final frames start with the cross-faded overlap and end where the new tail begins.
    """
    shared = settings.condition_frame == "first_shared" and settings.overlap
    image = tail.frames[:, 0] if shared else tail.last_frame
    height, width = image.shape[1:3]
    cond, _ = pipe.condition(image, **dict(condition_settings, width=width, height=height, num_frames=settings.clip_frames))
    init = initial_latents(tail, settings, cond.latent_shape, seed)
    latents = pipe.sample(cond, seed, settings.steps, init, settings.overlap_denoise)
    overlap = settings.overlap
    if settings.crossfade == "latent" and overlap:
        latents = torch.cat([blend(tail.latents, latents[:, :overlap]), latents[:, overlap:]], dim=1)
    frames = pipe.decode(latents, **decode_settings)
    if settings.crossfade == "pixel" and overlap:
        frames = torch.cat([blend(tail.frames, frames[:, :overlap]), frames[:, overlap:]], dim=1)
    return split_clip(latents, frames, overlap)


def extend(pipe, tail: Tail, clips: int, seed: int, settings: ExtendSettings, condition_settings: dict, decode_settings: dict | None = None, progress=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Add `clips` clips after `tail`, clip i with seed + i. Yields (frames, latents) as they
    become final, in order: per clip its frames from the overlap to its own tail, then at the
    end the last tail. `progress(done, total)` after each clip."""
    for index in range(clips):
        frames, latents, tail = next_clip(pipe, tail, seed + index, settings, condition_settings, decode_settings or {})
        yield frames, latents
        if progress is not None:
            progress(index + 1, clips)
    yield tail.frames, tail.latents


def generate_long(pipe, images: torch.Tensor, length: int, seed: int, settings: ExtendSettings, condition_settings: dict, decode_settings: dict | None = None, progress=None) -> Iterator[torch.Tensor]:
    """Start images (clips, H, W, C) -> the frames of `length`-frame videos, piece by piece.

    The first clip is an ordinary generation (the same frames as without extension, same seed);
    the next ones extend it with seeds seed + 1, seed + 2 ... `progress(done, total)` counts clips.
    """
    clips = clips_for_length(length, settings)
    report = progress or (lambda done, total: None)
    cond, _ = pipe.condition(images, **dict(condition_settings, num_frames=settings.clip_frames))
    latents = pipe.sample(cond, seed, settings.steps)
    frames, _, tail = split_clip(latents, pipe.decode(latents, **(decode_settings or {})), settings.overlap)
    report(1, clips)
    yield frames
    for frames, _ in extend(pipe, tail, clips - 1, seed + 1, settings, condition_settings, decode_settings, lambda done, total: report(done + 1, clips)):
        yield frames


def extend_clip(pipe, frames: torch.Tensor, latents: torch.Tensor | None, new_frames: int, seed: int, settings: ExtendSettings, condition_settings: dict, decode_settings: dict | None = None, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip (clips, n, H, W, 3), and the raw latents of its last frames if known, -> the clip
    `new_frames` longer and the latents of its last frames: the given ones (or, without them,
    from the first overlap on), up to the end."""
    clips = clips_for_new_frames(new_frames, settings)
    check_clip_length(frames.shape[1], settings)
    tail = tail_of(pipe.model, frames, latents, settings.overlap)
    keep = frames.shape[1] - settings.overlap
    pieces = [frames[:, :keep]]
    latent_pieces = [] if latents is None else [latents[:, : latents.shape[1] - settings.overlap].float()]
    for piece, piece_latents in extend(pipe, tail, clips, seed, settings, condition_settings, decode_settings, progress):
        pieces.append(piece)
        latent_pieces.append(piece_latents)
    return torch.cat(pieces, dim=1), torch.cat(latent_pieces, dim=1)
