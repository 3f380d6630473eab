"""Calibration of sfv_core.memory's working-memory estimates against measured peak RSS.

    python benchmarks/bench_memory.py [--config tiny|full] [--sizes 256x256x8,512x512x8]

Each stage (VAE encode of the start image, one UNet pass, temporal decode) runs in a fresh
process (CPU, fp32, one thread); its working memory is the peak RSS during the stage minus
the RSS just before it (weights and inputs already in place). Prints one JSON line per stage
and size with the measured bytes, the estimate, and estimate / measured (the margin: above 1
means the estimate errs on the safe side).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def measure(config_name: str, stage: str, width: int, height: int, frames: int, queue) -> None:
    import torch

    from sfv_core import conditioning, memory, models, sampling

    torch.set_num_threads(1)
    configs = models.TINY if config_name == "tiny" else models.FULL
    model = models.build_random_model(configs)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if stage == "encode":
            image = torch.rand(1, 3, height, width) * 2 - 1
            estimate = memory.encode_bytes(model.vae.config, torch.float32, 1, height, width)
            run = lambda: conditioning.encode_image_latent(model.vae, image, 0.02, generator)
        elif stage == "unet":
            cond = sampling.Conditioning(
                image_embeds=torch.randn(1, 1, model.unet.config.cross_attention_dim),
                image_latent=torch.randn(1, 4, height // 8, width // 8),
                added_time_ids=conditioning.time_ids(7, 127, 0.02, 1),
                num_frames=frames,
            )
            estimate = memory.unet_bytes(model.unet.config, torch.float32, 1, frames, height, width)
            run = lambda: sampling.sample(model.unet, cond, generator)
        else:
            latents = torch.randn(frames, 4, height // 8, width // 8)
            estimate = memory.decode_bytes(model.vae.config, torch.float32, frames, height, width)
            run = lambda: model.vae.decode(latents, num_frames=frames).sample
        before = current_rss()
        run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    measured = max(peak - before, 1)
    queue.put({"config": config_name, "stage": stage, "size": f"{width}x{height}x{frames}", "measured_mib": round(measured / 2**20, 1),
               "estimate_mib": round(estimate / 2**20, 1), "estimate_over_measured": round(estimate / measured, 2)})


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--config", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--sizes", default="256x256x8,512x512x8")
    parser.add_argument("--stages", default="encode,unet,decode")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    for size in args.sizes.split(","):
        width, height, frames = (int(n) for n in size.split("x"))
        for stage in args.stages.split(","):
            queue = context.Queue()
            process = context.Process(target=measure, args=(args.config, stage, width, height, frames, queue))
            process.start()
            print(json.dumps(queue.get()), flush=True)
            process.join()


if __name__ == "__main__":
    main()
