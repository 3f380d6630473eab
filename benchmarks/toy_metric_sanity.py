"""How the toy's FVD proxy (sfv_core/toy/metric.py) ranks known degradations.

    python benchmarks/toy_metric_sanity.py [--clips 100]

Reference: held-out clips. Compared: training clips (same distribution), the same training
clips blurred, with shuffled frames, with a frozen first frame, with contrast halved and with
pixel noise. A useful proxy puts the same distribution far below every degradation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfv_core.toy import data, metric  # noqa: E402


def blur(clips: torch.Tensor, k: int) -> torch.Tensor:
    x = clips.permute(0, 1, 4, 2, 3).flatten(0, 1)
    y = F.conv2d(F.pad(x, (k // 2,) * 4, mode="replicate"), torch.ones(3, 1, k, k) / (k * k), groups=3)
    return y.unflatten(0, clips.shape[:2]).permute(0, 1, 3, 4, 2)


DEGRADATIONS = {
    "same distribution": lambda c: c,
    "blur 3 px": lambda c: blur(c, 3),
    "blur 5 px": lambda c: blur(c, 5),
    "shuffled frames": lambda c: c[:, torch.randperm(c.shape[1], generator=torch.Generator().manual_seed(0))],
    "frozen first frame": lambda c: c[:, :1].expand_as(c).contiguous(),
    "contrast halved": lambda c: c * 0.5 + 0.25,
    "pixel noise 0.05": lambda c: (c + 0.05 * torch.randn(c.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--clips", type=int, default=100)
    args = parser.parse_args()
    reference = metric.video_features(data.to_float(data.generate_split("heldout", args.clips)))
    other = data.to_float(data.generate_split("train", args.clips))
    for name, degrade in DEGRADATIONS.items():
        print(f"{name}: {metric.frechet_distance(reference, metric.video_features(degrade(other))):.3f}")


if __name__ == "__main__":
    main()
