"""Trainer benchmarks.

  python benchmarks/bench_train.py            # measure: tiny config on this machine (CPU here)
  python benchmarks/bench_train.py --estimate # estimate: device memory of one step at the paper's size

measure: steps/s and peak RSS of full training steps (G + D phases, optimisers, EMA; one
micro-batch of pre-encoded latents, R1 on every 4th step as configured), each variant
(gradient checkpointing on / off) in a fresh process so peaks do not mix.

estimate: the full SVD UNet (1.52 B) built on PyTorch's `meta` device (shapes, no memory),
one clip of 14 x 4 x 56 x 96 latents (768x448), bf16 activations. Autograd runs for real on
meta tensors; every tensor saved for backward is caught with `saved_tensors_hooks` and
counted once (parameters excluded). Attention is modelled as a fused kernel (flash /
memory-efficient: saves q, k, v, out and the log-sum-exp) except where the trainer forces
the math kernel (the exact R1 double backward). With gradient checkpointing the count is:
tensors saved outside checkpointed blocks + the inputs the checkpoints keep + the largest
single block's activations (rebuilt during its backward). Static memory: Adam with fp32
master weights = 16 bytes per trained parameter (weights 4, grads 4, m 4, v 4) + the fp32
EMA (4) + the frozen encoder copy in bf16 (2) + heads (16 bytes each).
"""

from __future__ import annotations

import argparse
import json
import os
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1e9


# ---- measure (tiny, this machine) --------------------------------------------------------


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux: ru_maxrss is in KiB)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_variant(checkpointing: bool, steps: int, frames: int, size: int, threads: int) -> dict:
    from sfv_core.sampling import Conditioning
    from sfv_core.train.config import load_config
    from sfv_core.train.trainer import Trainer

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(None, [
        "model.path=tiny-random", "data.path=unused", "data.latent_cache=unused", "run.output_dir=/tmp/sfv-bench",
        f"num_frames={frames}", f"width={size}", f"height={size}", "gradient_accumulation=1", "mixed_precision=fp32",
        "head_channels=32", "cond_channels=32", "preview_every=0", f"gradient_checkpointing={str(checkpointing).lower()}",
    ])
    trainer = Trainer(cfg)
    h = w = size // 8
    latents = torch.randn(1, frames, 4, h, w)
    cond = Conditioning(torch.randn(1, 1, 32), torch.randn(1, 4, h, w), torch.tensor([[6.0, 127.0, 0.02]]), frames)
    before = peak_rss_bytes()

    def step():
        trainer.accumulate(latents, cond, sync=True)
        trainer.optimizer_step()

    step()  # warm-up (allocator, first-call overheads)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    return {
        "gradient_checkpointing": checkpointing, "steps": steps, "frames": frames, "pixels": f"{size}x{size}",
        "steps_per_second": steps / seconds, "peak_rss_gb": peak_rss_bytes() / GB, "rss_before_steps_gb": before / GB,
        "torch_threads": torch.get_num_threads(),
        # Other processes on a shared CPU slow these steps a lot: keep the machine's load with the numbers.
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def measure(args) -> None:
    print(f"device: CPU, {os.cpu_count()} cores; no GPU was available for these numbers")
    # Each variant in a fresh process, so that peak RSS is that variant's own.
    context = multiprocessing.get_context("spawn")
    for checkpointing in (False, True):
        with context.Pool(1) as pool:
            result = pool.apply(measure_variant, (checkpointing, args.steps, args.frames, args.size, args.threads))
        print(json.dumps(result))


# ---- estimate (paper size, meta device) ---------------------------------------------------


class SavedTensors:
    """Bytes of distinct non-parameter tensors saved for backward while active."""

    def __init__(self, parameters):
        self.parameter_ids = {id(p) for p in parameters}
        self.seen: dict[int, tuple[torch.Tensor, int]] = {}

    def pack(self, tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in self.parameter_ids and id(base) not in self.seen:
            self.seen[id(base)] = (base, base.numel() * base.element_size())  # keeps it alive: ids stay unique
        return tensor

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.seen.values())


class FusedAttention(torch.autograd.Function):
    """Memory model of flash / memory-efficient attention: saves q, k, v, out and the LSE."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
    return FusedAttention.apply(query, key, value)


class CheckpointAccounting:
    """diffusers' gradient checkpointing, plus a count of what it keeps and rebuilds."""

    def __init__(self, parameters):
        self.parameters = list(parameters)
        self.kept = SavedTensors(self.parameters)
        self.largest_block = 0

    def __call__(self, module, *args):
        for arg in args:
            if isinstance(arg, torch.Tensor):
                self.kept.pack(arg)
        with SavedTensors(self.parameters) as inside:  # the block's activations, rebuilt in backward
            module(*args)
        self.largest_block = max(self.largest_block, inside.bytes)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def meta_modules(heads_width: int = 256):
    from sfv_core.models import FULL, build_unet
    from sfv_core.train.discriminator import DiscriminatorHeads, FrozenUNetEncoder

    with torch.device("meta"):
        unet = build_unet(FULL.unet)
    unet.to("meta", torch.bfloat16)  # a few parameters are made with legacy CPU constructors
    encoder = FrozenUNetEncoder(unet)
    with torch.device("meta"):
        heads = DiscriminatorHeads(encoder.channels, 1024, heads_width, heads_width).to(torch.bfloat16)
    return unet, encoder, heads


def activation_bytes(run, parameters, checkpoint_modules=()) -> dict:
    """Saved-for-backward bytes of `run()`, plain, then with the modules' blocks checkpointed."""
    from sfv_core.train.memory import enable_activation_checkpointing

    results = {}
    for checkpointing in (False, True):
        accounting = CheckpointAccounting(parameters)
        for module in checkpoint_modules:
            if checkpointing:
                enable_activation_checkpointing(module, accounting)
        with SavedTensors(parameters) as outside:
            run()
        total = outside.bytes + (accounting.kept.bytes + accounting.largest_block if checkpointing else 0)
        results["checkpointed" if checkpointing else "plain"] = total
    return results


def estimate(args) -> None:
    import torch.nn.functional as F

    from sfv_core.sampling import Conditioning, denoise

    unet, encoder, heads = meta_modules()
    frames, h, w = 14, 448 // 8, 768 // 8
    meta = dict(device="meta", dtype=torch.bfloat16)
    cond = Conditioning(torch.empty(1, 1, 1024, **meta), torch.empty(1, 4, h, w, **meta), torch.empty(1, 3, **meta), frames)
    sigma = torch.full((1,), 700.0, device="meta")
    all_parameters = [*unet.parameters(), *encoder.parameters(), *heads.parameters()]

    def g_phase():  # G forward, re-noise, frozen encoder (grad to input), heads
        x = torch.empty(1, frames, 4, h, w, **meta)
        x0 = denoise(unet, x, sigma, cond)
        heads(encoder(x0, sigma, cond), sigma, cond)

    def r1_phase():  # encoder on the real input with grad, heads, then the double backward graph
        x = torch.empty(1, frames, 4, h, w, **meta).requires_grad_(True)
        score = sum(l.float().mean() for l in heads(encoder(x, sigma, cond), sigma, cond))
        (grad,) = torch.autograd.grad(score, x, create_graph=True)
        grad.pow(2).sum()

    def d_phase(passes: int):  # encoder without grad; heads with grad on real, fake (and perturbed real)
        for _ in range(passes):
            with torch.no_grad():
                features = encoder(torch.empty(1, frames, 4, h, w, **meta), sigma, cond)
            heads(features, sigma, cond)

    original_sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = fused_sdpa
    try:
        g = activation_bytes(g_phase, all_parameters, (unet, encoder))
        d = activation_bytes(lambda: d_phase(2), all_parameters, (encoder,))
        d_r1 = activation_bytes(lambda: d_phase(3), all_parameters, (encoder,))
    finally:
        F.scaled_dot_product_attention = original_sdpa
    r1 = activation_bytes(r1_phase, all_parameters, (encoder,))  # math attention: double backward

    count = lambda module: sum(p.numel() for p in module.parameters())
    trained, frozen, head_params = count(unet), count(encoder), count(heads)
    static = {
        "generator weights+grads+Adam m,v (fp32, 16 B/param)": 16 * trained,
        "generator EMA (fp32)": 4 * trained,
        "frozen encoder copy (bf16)": 2 * frozen,
        "heads weights+grads+Adam (fp32)": 16 * head_params,
        "VAE + CLIP in bf16 (on-the-fly encoding only; 0 with a latent cache)": 2 * (97_700_000 + 632_000_000),
    }
    sharded = static["generator weights+grads+Adam m,v (fp32, 16 B/param)"] + static["generator EMA (fp32)"]
    replicated = static["frozen encoder copy (bf16)"] + static["heads weights+grads+Adam (fp32)"]
    on_the_fly = static["VAE + CLIP in bf16 (on-the-fly encoding only; 0 with a latent cache)"]
    step_peak = lambda kind, r1: max(g[kind], (r1 if r1 is not None else d_r1)[kind])
    peaks = {
        "DDP, latent cache, checkpointing, approximate R1": sharded + replicated + step_peak("checkpointed", None),
        "DDP, on-the-fly encoding, checkpointing, approximate R1": sharded + replicated + on_the_fly + step_peak("checkpointed", None),
        "DDP, latent cache, no checkpointing, approximate R1": sharded + replicated + step_peak("plain", None),
        "DDP, latent cache, checkpointing, exact R1": sharded + replicated + step_peak("checkpointed", r1),
        "FSDP over 8 GPUs, latent cache, checkpointing, approximate R1": sharded / 8 + replicated + step_peak("checkpointed", None),
    }
    report = {
        "peak_gb per device (before allocator overhead and the CUDA context)": {k: round(v / GB, 1) for k, v in peaks.items()},
        "parameters": {"generator": trained, "frozen_encoder": frozen, "heads": head_params},
        "static_gb": {k: round(v / GB, 2) for k, v in static.items()},
        "activations_gb (one clip, 14x768x448, bf16)": {
            "G phase": {k: round(v / GB, 2) for k, v in g.items()},
            "D phase without R1": {k: round(v / GB, 2) for k, v in d.items()},
            "D phase with approximate R1 (default)": {k: round(v / GB, 2) for k, v in d_r1.items()},
            "D phase with exact R1 (math attention)": {k: round(v / GB, 2) for k, v in r1.items()},
        },
    }
    print(json.dumps(report, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--estimate", action="store_true", help="paper-size memory estimate on the meta device")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--size", type=int, default=128, help="clip width = height in pixels")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--variant", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.estimate:
        estimate(args)
    elif args.variant is not None:
        print(json.dumps(measure_variant(bool(args.variant), args.steps, args.frames, args.size, args.threads)))
    else:
        measure(args)


if __name__ == "__main__":
    main()
