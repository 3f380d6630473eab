"""The one table of value ranges. The nodes' INPUT_TYPES (`widget`), the command line
(`check_generation`, `SEED`...) and the trainer config (`train.config`) all read it, so the
three can never accept different numbers.

Seeds: ComfyUI's widget range, [0, 2**64); outside it is refused (ComfyUI's own widget clamps
instead, but a typed number that silently changes is a different clip than asked for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError
from .sampling import MAX_STEPS


@dataclass(frozen=True)
class Range:
    name: str  # as the user sees it
    low: float
    high: float
    why: str  # what the range means, said in the error
    integer: bool = True

    def check(self, value, name: str | None = None):
        """`value` if finite and within [low, high] (and whole, for integer ranges); else an InputError."""
        label = name or self.name
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{label} must be a number, got {value!r}.")
        if self.integer and isinstance(value, float) and value.is_integer():
            value = int(value)
        if self.integer and not isinstance(value, int):
            raise InputError(f"{label} must be a whole number between {self.low} and {self.high} ({self.why}), got {value}.")
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise InputError(f"{label} must be between {self.low} and {self.high} ({self.why}), got {value}.")
        return value

    def widget(self) -> dict:
        """min / max for a ComfyUI INT or FLOAT input."""
        return {"min": self.low, "max": self.high}


SIZE_MULTIPLE = 8
WIDTH = Range("width", 64, 16384, "pixels, a multiple of 8")
HEIGHT = Range("height", 64, 16384, "pixels, a multiple of 8")
# Training clips are cropped to their size, with no start-image conditioning at it: any multiple of 8.
CLIP_WIDTH = Range("data.width", 8, 16384, "training clip pixels, a multiple of 8")
CLIP_HEIGHT = Range("data.height", 8, 16384, "training clip pixels, a multiple of 8")
FRAMES = Range("frames", 1, 4096, "frames per clip; SVD was trained on 14")
FPS = Range("fps", 1, 1024, "the frame rate the model is told; trained at 7", integer=False)
MOTION_BUCKET = Range("motion bucket id", 0, 1023, "higher moves more; trained around 127")
AUGMENTATION = Range("augmentation", 0.0, 10.0, "noise on the start frame; trained at 0.02", integer=False)
SEED = Range("seed", 0, 2**64 - 1, "ComfyUI's seed range")
STEPS = Range("steps", 1, MAX_STEPS, "SF-V is trained for 1 step")
DENOISE = Range("denoise", 0.001, 1.0, "1 regenerates, lower keeps more of the latent", integer=False)
DECODE_CHUNK = Range("frames per decode chunk", 0, 4096, "0 decodes a whole clip at once")
DECODE_OVERLAP = Range("decode overlap", 0, 4095, "frames shared by consecutive chunks")
FRAMES_PER_CLIP = Range("frames per clip", 0, 4096, "0: as stored in the LATENT")
# An SF-V LoRA is trained for strength 1; 0 is the base model. Beyond +-4 its change is scaled far
# past anything it was trained for (ComfyUI's own LoRA widget allows +-100, which only makes noise).
LORA_STRENGTH = Range("lora strength", -4.0, 4.0, "1 applies the LoRA as trained, 0 leaves the model as it is", integer=False)
LORA_RANK = Range("LoRA rank", 1, 4096, "factor width per layer; clipped to each layer's smaller side")


def _size_fix(value: int, limit: Range) -> str | None:
    """The sizes to use instead of `value` (in range, not a multiple of 8 or too small), or None when it is fine."""
    if value >= limit.low and value % SIZE_MULTIPLE == 0:
        return None
    lower = value // SIZE_MULTIPLE * SIZE_MULTIPLE
    return " or ".join(str(v) for v in (lower, lower + SIZE_MULTIPLE) if limit.low <= v <= limit.high) or str(limit.low)


def check_size(width: int, height: int) -> None:
    """Width and height: numbers in range, then multiples of 8 of at least 64; the message names
    the wrong one (ComfyUI shows it under both widgets)."""
    for name, value, limit in (("width", width, WIDTH), ("height", height, HEIGHT)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= limit.high or value != int(value):
            limit.check(value, name)
    fixes = {name: (value, _size_fix(int(value), limit)) for name, value, limit in (("width", width, WIDTH), ("height", height, HEIGHT))}
    wrong = {name: pair for name, pair in fixes.items() if pair[1] is not None}
    if len(wrong) == 1:
        ((name, (value, fix)),) = wrong.items()
        other = "height" if name == "width" else "width"
        raise InputError(f"{name} {value} is not a multiple of 8 of at least {WIDTH.low} ({other} {fixes[other][0]} is fine): the VAE works on 8x8 pixel blocks. Use {fix}.")
    if wrong:
        raise InputError(f"width {width} and height {height} are not multiples of 8 of at least {WIDTH.low}: the VAE works on 8x8 pixel blocks. "
                         f"Use width {fixes['width'][1]} and height {fixes['height'][1]}.")


def check_generation(width: int, height: int, frames: int, fps: float, motion_bucket_id: float, augmentation: float) -> None:
    """Every number a clip's conditioning takes, before any work."""
    check_size(width, height)
    FRAMES.check(frames)
    FPS.check(fps)
    MOTION_BUCKET.check(motion_bucket_id)
    AUGMENTATION.check(augmentation)
