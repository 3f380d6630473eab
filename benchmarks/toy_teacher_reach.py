"""What the toy's full (temporal VAE) decoder's frame t depends on, frame by frame.

    python benchmarks/toy_teacher_reach.py [--clips 32] [--threads 2]

On the latents of held-out clips (the toy SF-V's 1-step samples and the VAE encoder's latents of
the real clips), the full decode of the 8-frame clip against two variants, as PSNR per frame:
  - the clip continued: one to three copies of its last latent appended, so no frame is the
    clip's end any more (what ending there changes: the temporal convs pad past the end);
  - the clip preceded: one or two copies of its first latent put before it (what starting there
    changes: they pad before the start too);
  - the future frozen: for each t, the latents after t replaced by copies of frame t, the length
    kept (what frame t takes from the content of later frames, which no causal decoder sees).
The tiny decoder is causal and is told where the clip ends (`end_frames`): the second variant
is the full decoder held to what the tiny one may know.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfv_core.assets import TOY_CHECKPOINT  # noqa: E402
from sfv_core.toy import data as toy_data  # noqa: E402
from sfv_core.toy import experiment  # noqa: E402
from sfv_core.toy.decoder import heldout_latents  # noqa: E402


def psnr_per_frame(frames: torch.Tensor, reference: torch.Tensor) -> list:
    error = (frames - reference).square().mean(dim=(0, 2, 3, 4))
    return [round(float(-10 * torch.log10(e)), 1) if e > 0 else "equal" for e in error]


def continued(vae, latents: torch.Tensor, extra: int) -> torch.Tensor:
    longer = torch.cat([latents, latents[:, -1:].expand(-1, extra, -1, -1, -1)], dim=1)
    return experiment.decode(vae, longer)[:, : latents.shape[1]]


def preceded(vae, latents: torch.Tensor, extra: int) -> torch.Tensor:
    longer = torch.cat([latents[:, :1].expand(-1, extra, -1, -1, -1), latents], dim=1)
    return experiment.decode(vae, longer)[:, extra:]


def future_frozen(vae, latents: torch.Tensor) -> torch.Tensor:
    num_frames = latents.shape[1]
    frames = []
    for t in range(num_frames):
        frozen = torch.cat([latents[:, : t + 1], latents[:, t : t + 1].expand(-1, num_frames - 1 - t, -1, -1, -1)], dim=1)
        frames.append(experiment.decode(vae, frozen)[:, t])
    return torch.stack(frames, dim=1)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    toy = experiment.ToyConfig()
    model = experiment.load(TOY_CHECKPOINT)
    real = toy_data.to_float(toy_data.generate_split("heldout", args.clips, toy.num_frames, toy.size))
    generated, encoded = heldout_latents(model, real, toy)
    for name, latents in (("SF-V 1 step", generated), ("real clips' latents", encoded)):
        full = experiment.decode(model.vae, latents)
        for extra in (1, 2, 3):
            print(f"{name}, the clip continued by {extra} frame(s): PSNR dB per frame {psnr_per_frame(continued(model.vae, latents, extra), full)}")
        for extra in (1, 2):
            print(f"{name}, the clip preceded by {extra} frame(s): PSNR dB per frame {psnr_per_frame(preceded(model.vae, latents, extra), full)}")
        print(f"{name}, each frame's future frozen: PSNR dB per frame {psnr_per_frame(future_frozen(model.vae, latents), full)}")


if __name__ == "__main__":
    main()
