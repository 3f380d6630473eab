"""Frame by frame, what the toy's full and tiny decoders make of the same latents.

    python benchmarks/toy_decoder_frames.py [--decoder FILE] [--clips 100] [--threads 2]

For the held-out clips: the real frames, and the full (temporal VAE) and tiny decodes of the
real clips' own latents and of the toy SF-V's 1-step samples (the miniature's seeds). Prints
the mean brightness of each frame and the mean absolute change between neighbouring frames.
The full decoder's temporal convs pad past the clip's ends, so its first and last frames
depend on where the clip starts and ends; the tiny decoder knows the first (its memory is
empty) and is told the last (`end_frames`).

Then, on the SF-V samples: the tiny decode's PSNR against the full decode frame by frame, and
what the FVD proxy makes of each decode with its frames' deviations from the clip's mean
frame scaled (x0.75 ... x1.5: the moving content's contrast weakened or strengthened, the
still background unchanged), against the real clips and against the VAE's reconstructions.
A measurement of the metric, not a decoder: the clip's mean frame needs every frame.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfv_core import tiny_decoder  # noqa: E402
from sfv_core.assets import TOY_CHECKPOINT, TOY_TINY_DECODER  # noqa: E402
from sfv_core.toy import data as toy_data  # noqa: E402
from sfv_core.toy import experiment, metric  # noqa: E402
from sfv_core.toy.decoder import heldout_latents, tiny_decode  # noqa: E402


def profile(clips: torch.Tensor) -> tuple[list[float], list[float]]:
    """(mean brightness per frame, mean absolute change per pair of neighbouring frames)."""
    brightness = clips.mean(dim=(0, 2, 3, 4))
    change = (clips[:, 1:] - clips[:, :-1]).abs().mean(dim=(0, 2, 3, 4))
    return [round(float(v), 4) for v in brightness], [round(float(v), 4) for v in change]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--decoder", default=str(TOY_TINY_DECODER))
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    toy = experiment.ToyConfig()
    model = experiment.load(TOY_CHECKPOINT)
    decoder = tiny_decoder.load_tiny_decoder(args.decoder)
    tiny_decoder.check_fits(decoder, model.vae)
    real = toy_data.to_float(toy_data.generate_split("heldout", args.clips, toy.num_frames, toy.size))
    generated, encoded = heldout_latents(model, real, toy)
    rows = {
        "real clips": real,
        "real clips' latents, full decoder": experiment.decode(model.vae, encoded),
        "real clips' latents, tiny decoder": tiny_decode(decoder, encoded),
        "SF-V 1 step, full decoder": experiment.decode(model.vae, generated),
        "SF-V 1 step, tiny decoder": tiny_decode(decoder, generated),
    }
    for name, clips in rows.items():
        brightness, change = profile(clips)
        print(f"{name}\n  brightness per frame: {brightness}\n  change between frames: {change}")
    full, tiny = rows["SF-V 1 step, full decoder"], rows["SF-V 1 step, tiny decoder"]
    error = (tiny - full).square().mean(dim=(0, 2, 3, 4))
    print(f"SF-V 1 step, tiny against full decode, PSNR dB per frame: {[round(float(-10 * torch.log10(e)), 1) for e in error]}")
    references = {"real": metric.video_features(real), "VAE reconstructions": metric.video_features(rows["real clips' latents, full decoder"])}
    print("| decode of SF-V 1 step | deviations from the clip's mean frame | motion | FVD proxy vs real | vs VAE reconstructions |\n|---|---|---|---|---|")
    for name, clips in (("full", full), ("tiny", tiny)):
        for gain in (0.75, 1.0, 1.25, 1.5):
            scaled = scale_deviations(clips, gain)
            features = metric.video_features(scaled)
            distances = " | ".join(f"{metric.frechet_distance(features, ref):.3f}" for ref in references.values())
            print(f"| {name} | x{gain} | {metric.motion(scaled):.4f} | {distances} |")


def scale_deviations(clips: torch.Tensor, gain: float) -> torch.Tensor:
    """Each frame's deviation from its clip's mean frame times `gain`, clamped to [0, 1]."""
    mean_frame = clips.mean(dim=1, keepdim=True)
    return (mean_frame + gain * (clips - mean_frame)).clamp(0, 1)


if __name__ == "__main__":
    main()
