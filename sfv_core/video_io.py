"""Reading start images and writing clips and latents, always atomically.

Every file is written under a temporary name in its destination folder and renamed into place,
so an interrupted run never leaves a half-written video, frame or latent behind.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, OutputError
from .files import atomic_folder, atomic_path

VIDEO_SUFFIXES = (".webp", ".gif", ".mp4")


SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16-bit grey PNG/TIFF; ComfyUI rescales mode I too


def _pixels(image) -> np.ndarray:
    """A Pillow image of any mode -> float32 (H, W, C) in [0, 1]; C is 1, 2, 3 or 4."""
    from PIL import ImageCms

    if image.mode in SIXTEEN_BIT_MODES:
        return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if image.mode == "F":  # Pillow's scale for float images: 0..255, as its own convert("L") reads them
        return np.clip(np.asarray(image, dtype=np.float32) / 255.0, 0.0, 1.0)
    if image.mode == "LAB":  # Pillow's convert would copy L, a, b into R, G, B
        image = ImageCms.profileToProfile(image, ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), outputMode="RGB")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    elif image.mode not in ("L", "LA", "RGB", "RGBA"):
        alpha = any(band in ("A", "a") for band in image.getbands())
        image = image.convert("RGBA" if alpha else ("L" if len(image.getbands()) == 1 else "RGB"))
    return np.asarray(image, dtype=np.float32) / 255.0


def _shrink(image, fit: tuple[int, int]):
    """Reduce by a whole factor while keeping at least twice `fit` (width, height) on both sides.

    The antialiased resize to `fit` that follows sees the same detail, and a huge image never
    reaches float32 at full size."""
    factor = min(image.width // (2 * fit[0]), image.height // (2 * fit[1]))
    return image.reduce(factor) if factor >= 2 else image


def load_image(path: str | os.PathLike, fit: tuple[int, int] | None = None) -> torch.Tensor:
    """An image file -> (1, H, W, C) float in [0, 1]; C is 1 (grey), 2 (grey+alpha), 3 or 4 (RGBA).

    EXIF orientation is applied (as ComfyUI's LoadImage does). With `fit` (the output's width,
    height) a large image is reduced as it is read (JPEG: decoded at a lower scale)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"start image {path} {what}: check the --image path.")
    try:
        with Image.open(path) as image:
            if fit is not None and image.format == "JPEG":
                side = 2 * max(fit)  # before the EXIF rotation, so room for either orientation
                image.draft(image.mode, (side, side))
            image = ImageOps.exif_transpose(image)
            if fit is not None:
                image = _shrink(image, fit)
            pixels = _pixels(image)
    except Image.DecompressionBombError as error:
        raise InputError(f"{path} is too large to read safely ({error}): downscale it first.") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied; make it readable or copy it somewhere readable.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InputError(f"cannot read {path} as an image ({error}): use a PNG, JPEG or WebP file.") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return torch.from_numpy(pixels.copy()).unsqueeze(0)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


FRAME_NAME = "frame_{:05d}.png"


def _check_frame_folder(folder: Path) -> None:
    """A PNG-frame output replaces its folder whole: refuse a folder that holds anything else."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file: PNG frames need a folder name (or use .webp, .gif, .mp4).")
    if not folder.is_dir():
        return
    others = [p.name for p in folder.iterdir() if not (p.name.startswith("frame_") and p.suffix == ".png" and p.is_file())]
    if others:
        raise OutputError(f"{folder} is a folder that holds other files ({', '.join(sorted(others)[:3])}): PNG frames replace the whole folder, so give a new or empty folder name.")


def check_output_path(path: str | os.PathLike, width: int | None = None, height: int | None = None) -> None:
    """Refuse an output we cannot write (its type; an odd size for mp4) before any work is done."""
    suffix = Path(path).suffix.lower()
    if suffix and suffix not in VIDEO_SUFFIXES:
        raise InputError(f"unknown output type {suffix!r}: use .webp, .gif, .mp4, or a folder name for PNG frames.")
    if suffix and Path(path).is_dir():
        raise OutputError(f"{path} is a folder, so a {suffix} file cannot be written there: choose another output name.")
    if not suffix and Path(path).is_file():
        raise OutputError(f"{path} is a file, so PNG frames cannot go in it as a folder: choose another output name, or add .webp, .gif or .mp4.")
    if not suffix:
        _check_frame_folder(Path(path))
    if suffix == ".mp4":
        _check_mp4_size(width or 0, height or 0)


def _check_mp4_size(width: int, height: int) -> None:
    if width % 2 or height % 2:
        raise InputError(f"mp4 (H.264, yuv420p) needs an even width and height, got {width}x{height}: use .webp or an even size.")


class _EncodedVideo:
    """.webp (animated, libwebp) and .mp4 (H.264) through PyAV: each frame is encoded as it is
    appended, so memory holds no more than the frames just given, whatever the length."""

    CODECS = {".mp4": ("mp4", "libx264", "yuv420p", {"crf": "17"}), ".webp": ("webp", "libwebp_anim", "bgra", {"quality": "90"})}

    def __init__(self, path: Path, fps: float, suffix: str):
        import av

        self.suffix = suffix
        self.format, self.codec, self.pix_fmt, self.options = self.CODECS[suffix]
        self.fps = Fraction(fps).limit_denominator(1000)
        # The webp muxer plays once by default; loop forever as the animated formats do.
        self.container = av.open(str(path), mode="w", format=self.format, options={"loop": "0"} if suffix == ".webp" else {})
        self.stream = None

    def append(self, pixels: np.ndarray) -> None:
        import av

        if self.stream is None:  # the size is known from the first frames
            if self.suffix == ".mp4":
                _check_mp4_size(pixels.shape[2], pixels.shape[1])
            self.stream = self.container.add_stream(self.codec, rate=self.fps)
            self.stream.width, self.stream.height, self.stream.pix_fmt = pixels.shape[2], pixels.shape[1], self.pix_fmt
            self.stream.options = self.options
        for frame in pixels:
            self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format=self.pix_fmt)))

    def finish(self) -> None:
        if self.stream is not None:
            self.container.mux(self.stream.encode())

    def close(self) -> None:
        self.container.close()


class _Gif:
    """Pillow writes a GIF in one call, so its frames are held until the end (as 8-bit RGB)."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.images = path, fps, []

    def append(self, pixels: np.ndarray) -> None:
        from PIL import Image

        self.images += [Image.fromarray(frame) for frame in pixels]

    def finish(self) -> None:
        first, *rest = self.images
        first.save(self.path, format="GIF", save_all=True, append_images=rest, duration=round(1000 / self.fps), loop=0, disposal=2)

    def close(self) -> None:
        self.images = []


class _PngFolder:
    """One PNG per frame, written as it comes into the temporary folder that `atomic_folder`
    swaps in whole at the end (no stale extra frames, no mix of two clips)."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0

    def append(self, pixels: np.ndarray) -> None:
        from PIL import Image

        for frame in pixels:
            Image.fromarray(frame).save(self.folder / FRAME_NAME.format(self.count), format="PNG")
            self.count += 1


class VideoWriter:
    """`append(frames)` clip after clip; `frames` is (n, H, W, 3) in [0, 1].

    A video file (.webp, .gif, .mp4) is written under a temporary name and renamed into place
    only when the `with` block ends without error: it appears complete or not at all.
    """

    def __init__(self, target):
        self.target = target

    def append(self, frames: torch.Tensor) -> None:
        self.target.append(_to_uint8(frames))


@contextmanager
def open_video(path: str | os.PathLike, fps: float):
    """A `VideoWriter` for .webp / .gif / .mp4, or a folder of PNGs for any other path."""
    check_output_path(path)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        with atomic_folder(path) as temporary:
            yield VideoWriter(_PngFolder(temporary))
        return
    with atomic_path(path) as temporary:
        target = _Gif(temporary, fps) if suffix == ".gif" else _EncodedVideo(temporary, fps, suffix)
        try:
            yield VideoWriter(target)
            target.finish()
        finally:
            target.close()


def save_clip(frames: torch.Tensor, path: str | os.PathLike, fps: float) -> Path:
    """(frames, H, W, 3) in [0, 1] -> .webp / .gif / .mp4, or a folder of PNGs for any other path."""
    with open_video(path, fps) as video:
        video.append(frames)
    return Path(path)


def clip_paths(out: str | os.PathLike, clips: int) -> list[Path]:
    """One output path per clip: `out` itself for one clip, `name_000.ext`, `name_001.ext` ... for several."""
    out = Path(out)
    if clips == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{index:03d}{out.suffix}") for index in range(clips)]


def save_latent(latents: torch.Tensor, path: str | os.PathLike) -> Path:
    """Raw latents (clips, frames, 4, h, w) -> safetensors in ComfyUI's .latent layout.

    The tensor is stored as (clips * frames, 4, h, w) under `latent_tensor` with the
    `latent_format_version_0` marker, so ComfyUI's LoadLatent reads it as it is.
    """
    from safetensors.torch import save

    path = Path(path)
    clips, frames = latents.shape[:2]
    tensors = {
        "latent_tensor": latents.reshape(clips * frames, *latents.shape[2:]).float().contiguous(),
        "latent_format_version_0": torch.tensor([]),
    }
    data = save(tensors, metadata={"clips": str(clips), "frames": str(frames)})
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)  # written by Python, so a full disk is an OSError like every output's
    return path


def load_latent(path: str | os.PathLike, frames: int | None = None) -> torch.Tensor:
    """A latent file written by `save_latent` or ComfyUI's SaveLatent -> (clips, frames, 4, h, w) raw."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"latent file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "latent_tensor" not in handle.keys():
                raise InputError(f"{path} holds no 'latent_tensor': it is not a latent written by SaveLatent or --save-latent.")
            flat = handle.get_tensor("latent_tensor").float()
            if "latent_format_version_0" not in handle.keys():
                flat = flat / 0.18215  # ComfyUI's oldest .latent files stored scaled latents
    except SafetensorError as error:
        raise InputError(f"cannot read {path} as safetensors ({error}).") from None
    if not torch.isfinite(flat).all():
        raise InputError(f"{path} holds NaN or infinite values: it is damaged; sample or encode that clip again.")
    frames = frames or int(metadata.get("frames", flat.shape[0]))
    if flat.ndim != 4 or flat.shape[0] % frames:
        raise InputError(f"latent of shape {tuple(flat.shape)} does not split into clips of {frames} frames.")
    return flat.reshape(flat.shape[0] // frames, frames, *flat.shape[1:])
