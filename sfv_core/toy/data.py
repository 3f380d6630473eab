"""Synthetic videos: coloured shapes moving and bouncing on textured backgrounds.

Every clip is a pure function of (split, index): the generator is seeded with
numpy's SeedSequence([split_id, index]), so the train and held-out splits are disjoint
streams and regenerating gives identical pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPLITS = {"train": 0, "heldout": 1}


def _rng(split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([SPLITS[split], int(index)]))


def _colour(rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    return rng.uniform(lo, hi, size=3)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # Texture scales are fractions of the frame and no finer than a tiny VAE's 8-pixel latent
    # grid can carry (stripes of a 6-16 px period at 64 px decoded to their average colour).
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a, b = _colour(rng, 0.1, 0.6), _colour(rng, 0.1, 0.6)
    kind = rng.integers(3)
    if kind == 0:  # stripes at a random angle and frequency
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.3, 0.6) * size
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif kind == 1:  # checkerboard
        cell = int(rng.integers(size // 8, size // 4 + 1))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:  # smooth blobs: a few random sinusoids
        t = np.zeros_like(xx)
        for _ in range(3):
            fx, fy, ph = rng.uniform(-6, 6) / size, rng.uniform(-6, 6) / size, rng.uniform(0, 2 * np.pi)
            t += np.sin(fx * xx + fy * yy + ph)
        t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    return a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]


def _mask(kind: int, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    if kind == 0:
        return dx**2 + dy**2 <= r**2
    if kind == 1:
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    return np.abs(dx) + np.abs(dy) <= r * 1.3  # diamond


def generate_clip(split: str, index: int, num_frames: int = 8, size: int = 64) -> np.ndarray:
    """One clip (num_frames, size, size, 3) uint8: 1-3 shapes with their own speed and direction,
    bouncing off the borders, over a stripe / checker / smooth texture."""
    rng = _rng(split, index)
    background = _background(rng, size)
    shapes = []
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(size * 0.07, size * 0.15)
        speed, angle = rng.uniform(0.5, 4.0) * size / 64, rng.uniform(0, 2 * np.pi)
        shapes.append(
            dict(kind=int(rng.integers(3)), r=r, x=rng.uniform(r, size - r), y=rng.uniform(r, size - r),
                 vx=speed * np.cos(angle), vy=speed * np.sin(angle), colour=_colour(rng, 0.5, 1.0) ** 0.5)
        )
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        image = background.copy()
        for s in shapes:
            image[_mask(s["kind"], s["x"], s["y"], s["r"], size)] = s["colour"]
            for axis, vel in (("x", "vx"), ("y", "vy")):  # move, then bounce off the borders
                s[axis] += s[vel]
                if s[axis] < s["r"] or s[axis] > size - s["r"]:
                    s[vel] = -s[vel]
                    s[axis] = float(np.clip(s[axis], s["r"], size - s["r"]))
        frames[t] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return frames


def generate_split(split: str, count: int, num_frames: int = 8, size: int = 64) -> np.ndarray:
    """(count, num_frames, size, size, 3) uint8."""
    return np.stack([generate_clip(split, i, num_frames, size) for i in range(count)])


def write_frame_folders(clips: np.ndarray, folder: str | Path) -> Path:
    """Each clip as a folder of PNG frames (the trainer's frame-folder input)."""
    from PIL import Image

    folder = Path(folder)
    for i, clip in enumerate(clips):
        clip_dir = folder / f"clip{i:05d}"
        clip_dir.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(clip):
            Image.fromarray(frame).save(clip_dir / f"{t:03d}.png")
    return folder


def to_float(clips: np.ndarray):
    """uint8 (N, F, H, W, 3) -> float32 torch tensor in [0, 1]."""
    import torch

    return torch.from_numpy(clips).float() / 255.0


def main(argv=None) -> int:
    """`python -m sfv_core.toy.data --out DIR`: the miniature's training clips as frame folders
    (the trainer's input), for the CPU quick start."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__, allow_abbrev=False)
    parser.add_argument("--out", required=True, help="folder to write clip00000/000.png, ... into")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    print(write_frame_folders(generate_split("train", args.clips, args.frames, args.size), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
