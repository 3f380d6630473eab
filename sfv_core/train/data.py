"""Training clips from a folder of videos and/or frame folders.

A clip is `num_frames` frames resampled to `fps`, resized to cover width x height and
centre-cropped, as (T, 3, H, W) floats in [-1, 1]; its first frame is the image condition.

Sources are probed once when the dataset is built: unreadable or too-short ones are dropped
and counted (logged by the trainer). A source that still fails to decode mid-run is replaced
by the next one, deterministically, and counted in the batch: training never crashes on a
bad file. Every random choice (clip start) is a function of (seed, epoch, index) alone, so
the data a step sees does not depend on worker processes and a resumed run sees the same.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

log = logging.getLogger("sfv_core.train")

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Source:
    """One video file or frame folder that can give at least one clip."""

    path: str
    kind: str  # "video" or "frames"
    frame_count: int
    fps: float
    frames: tuple[str, ...] = ()  # frame files, for kind == "frames"


@dataclass
class ScanReport:
    sources: list[Source]
    unreadable: list[str]
    too_short: list[str]

    def summary(self) -> str:
        return f"{len(self.sources)} usable sources, {len(self.unreadable)} unreadable skipped, {len(self.too_short)} too short skipped"


def find_candidates(root: str | Path) -> list[tuple[Path, str]]:
    """Video files and folders directly holding image frames under `root`, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data.path {root} is not a folder of videos or frame folders")
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            found.append((path, "video"))
        elif path.is_dir() and any(p.suffix.lower() in FRAME_SUFFIXES for p in path.iterdir()):
            found.append((path, "frames"))
    return found


def source_indices(frame_count: int, source_fps: float, target_fps: float, num_frames: int, start_fraction: float) -> list[int] | None:
    """Source frame indices of a clip resampled to `target_fps`, or None if the source is too short.

    `start_fraction` in [0, 1) picks the start among the valid positions.
    """
    step = source_fps / target_fps  # source frames per target frame (may be < 1: frames repeat)
    span = (num_frames - 1) * step
    last_start = frame_count - 1 - span
    if last_start < 0:
        return None
    start = math.floor(start_fraction * (math.floor(last_start) + 1))
    return [min(frame_count - 1, round(start + k * step)) for k in range(num_frames)]


def probe_video(path: Path) -> tuple[int, float]:
    """(frame count, fps) from the container, decoding one frame to prove the stream is readable."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        count = stream.frames
        if not count:  # webm and some mov files carry no frame count: use the duration
            seconds = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
            count = int(round(seconds * fps))
        next(container.decode(stream))
    if fps <= 0 or count <= 0:
        raise ValueError("no frame rate or frame count")
    return count, fps


def probe_frames(path: Path, fps: float) -> tuple[int, float, tuple[str, ...]]:
    from PIL import Image

    files = tuple(str(p) for p in sorted(path.iterdir()) if p.suffix.lower() in FRAME_SUFFIXES)
    with Image.open(files[0]) as image:
        image.verify()
    return len(files), fps, files


def scan(root: str | Path, num_frames: int, fps: float, frame_folder_fps: float | None) -> ScanReport:
    """Probe every candidate; keep those long enough for one clip."""
    report = ScanReport([], [], [])
    for path, kind in find_candidates(root):
        try:
            if kind == "video":
                count, source_fps = probe_video(path)
                files = ()
            else:
                count, source_fps, files = probe_frames(path, frame_folder_fps or fps)
        except Exception as error:  # any decoder / file error means: skip this source
            log.warning("skipping unreadable %s: %s", path, error)
            report.unreadable.append(str(path))
            continue
        if source_indices(count, source_fps, fps, num_frames, 0.0) is None:
            log.warning("skipping %s: %d frames at %.3g fps is too short for %d frames at %.3g fps", path, count, source_fps, num_frames, fps)
            report.too_short.append(str(path))
            continue
        report.sources.append(Source(str(path), kind, count, source_fps, files))
    return report


def decode_video(path: str, indices: list[int], fps: float) -> list[np.ndarray]:
    """RGB frames at source `indices` (sorted). Seeks near the first, then decodes forward."""
    import av

    wanted = list(indices)
    frames: list[np.ndarray] = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if wanted[0] > 0:
            container.seek(int((origin + wanted[0] / fps) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            index = round((frame.time - origin) * fps) if frame.time is not None else None
            if index is None:
                raise ValueError("frame without timestamp")
            # A frame stands in for every wanted index up to its own (covers dropped frames).
            while wanted and wanted[0] <= index:
                frames.append(frame.to_ndarray(format="rgb24"))
                wanted.pop(0)
            if not wanted:
                return frames
    raise ValueError(f"stream ended before frame {wanted[0]}")


def read_frame_files(files: tuple[str, ...], indices: list[int]) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for index in indices:
        with Image.open(files[index]) as image:
            out.append(np.asarray(image.convert("RGB")))
    return out


def to_clip(frames: list[np.ndarray], width: int, height: int) -> torch.Tensor:
    """uint8 (H, W, 3) frames -> (T, 3, height, width) in [-1, 1]: antialiased resize to cover, centre crop."""
    pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    old_height, old_width = pixels.shape[-2:]
    scale = max(width / old_width, height / old_height)
    size = (max(height, round(old_height * scale)), max(width, round(old_width * scale)))
    if size != (old_height, old_width):
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return pixels[..., top : top + height, left : left + width].clamp(-1.0, 1.0).contiguous()


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one item: a function of (seed, epoch, index) only."""
    return np.random.default_rng([seed, epoch, index])


NONE_LEFT = "no data source can be decoded any more"


class VideoClipDataset(torch.utils.data.Dataset):
    """Items are addressed by (epoch, index) so a clip's start depends on the epoch too."""

    def __init__(self, sources: list[Source], num_frames: int, fps: float, width: int, height: int, seed: int):
        self.sources = sources
        self.num_frames, self.fps, self.width, self.height, self.seed = num_frames, fps, width, height, seed

    def __len__(self) -> int:
        return len(self.sources)

    def read_clip(self, source: Source, start_fraction: float) -> torch.Tensor:
        indices = source_indices(source.frame_count, source.fps, self.fps, self.num_frames, start_fraction)
        if source.kind == "video":
            frames = decode_video(source.path, indices, source.fps)
        else:
            frames = read_frame_files(source.frames, indices)
        return to_clip(frames, self.width, self.height)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        for fallback in range(len(self.sources)):
            source = self.sources[(index + fallback) % len(self.sources)]
            try:
                clip = self.read_clip(source, item_rng(self.seed, epoch, index).random())
                return {"frames": clip, "fallbacks": torch.tensor(fallback)}
            except Exception as error:  # a file that passed the probe but fails now: use the next one
                log.warning("skipping %s mid-run: %s", source.path, error)
        raise InputError(f"{NONE_LEFT}: all {len(self.sources)} failed to decode mid-run (logged above); check the files under data.path, then rerun to resume from the last checkpoint")


class ClipOrder:
    """Epoch-seeded shuffled order, split across processes, as batches of (epoch, index).

    Resuming needs only (epoch, batch position): the order is recomputed, not stored.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed, self.rank, self.world_size = size, batch_size, seed, rank, world_size
        if self.batches_per_epoch == 0:
            raise InputError(f"{size} usable clips cannot fill one batch of {batch_size} on each of {world_size} processes: add data or lower data.batch_size")

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.world_size // self.batch_size

    def batches(self, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)).tolist()
        mine = order[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        batches = [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        return [[(epoch, index) for index in batch] for batch in batches[start:]]


class BatchStream:
    """Endless batches in ClipOrder, with a position that checkpoints save and restore."""

    def __init__(self, dataset, order: ClipOrder, num_workers: int = 0):
        self.dataset, self.order, self.num_workers = dataset, order, num_workers
        self.epoch, self.position = 0, 0
        self._iterator = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None

    def _start_epoch(self) -> None:
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.order.batches(self.epoch, self.position),
            num_workers=self.num_workers,
            persistent_workers=False,
        )
        self._iterator = iter(loader)

    def next(self) -> dict:
        if self.position >= self.order.batches_per_epoch:
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._start_epoch()
        try:
            batch = next(self._iterator)
        except InputError as error:  # from a worker process, its message also carries the worker's traceback
            message = str(error)
            raise InputError(message[message.rfind(NONE_LEFT):].strip() if NONE_LEFT in message else message) from None
        self.position += 1
        return batch
