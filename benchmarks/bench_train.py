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

    def __init__(self, parameters, recompute=None):
        self.parameters = list(parameters)
        self.kept = SavedTensors(self.parameters)
        self.largest_block = 0
        self.recompute = recompute  # the trainer's checkpoint function (LoRA: adapter-state aware)

    def __call__(self, module, *args):
        for arg in args:
            if isinstance(arg, torch.Tensor):
                self.kept.pack(arg)
        with SavedTensors(self.parameters) as inside:  # the block's activations, rebuilt in backward
            module(*args)
        self.largest_block = max(self.largest_block, inside.bytes)
        if self.recompute is not None:
            return self.recompute(module, *args)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def meta_modules(heads_width: int = 256, adapter: str = "full", rank: int = 32):
    """The full-size UNet, the discriminator's encoder and heads on the meta device. LoRA: the
    adapters on the UNet's attention and feed-forwards (the trainer's default targets) and the
    encoder sharing the base, as the trainer builds them."""
    from sfv_core.models import FULL, build_unet
    from sfv_core.train.config import ModelConfig
    from sfv_core.train.discriminator import DiscriminatorHeads, FrozenUNetEncoder

    with torch.device("meta"):
        unet = build_unet(FULL.unet)
    adapters = None
    if adapter == "lora":
        from sfv_core.train.adapters import LoraAdapters

        unet.to("meta", torch.float32)
        adapters = LoraAdapters(unet, ModelConfig(adapter="lora", lora_rank=rank, lora_alpha=float(rank)))
        encoder = FrozenUNetEncoder(unet, base_context=adapters.off)
    else:
        unet.to("meta", torch.bfloat16)  # a few parameters are made with legacy CPU constructors
        encoder = FrozenUNetEncoder(unet)
    with torch.device("meta"):
        heads = DiscriminatorHeads(encoder.channels, 1024, heads_width, heads_width).to(torch.bfloat16)
    return unet, encoder, heads, adapters


def activation_bytes(run, parameters, checkpoint_modules=(), recompute=None) -> dict:
    """Saved-for-backward bytes of `run()`, plain, then with the modules' blocks checkpointed."""
    from sfv_core.train.memory import enable_activation_checkpointing

    results = {}
    for checkpointing in (False, True):
        accounting = CheckpointAccounting(parameters, recompute)
        for module in checkpoint_modules:
            if checkpointing:
                enable_activation_checkpointing(module, accounting)
        with SavedTensors(parameters) as outside:
            run()
        total = outside.bytes + (accounting.kept.bytes + accounting.largest_block if checkpointing else 0)
        results["checkpointed" if checkpointing else "plain"] = total
    return results


def step_activations(unet, encoder, heads, adapters, width: int, height: int, frames: int = 14) -> dict:
    """Activation bytes of the G phase, the D phase with approximate R1 and with exact R1, one clip."""
    import torch.nn.functional as F

    from sfv_core.sampling import Conditioning, denoise

    h, w = height // 8, width // 8
    dtype = torch.bfloat16  # autocast's compute dtype
    meta = dict(device="meta", dtype=dtype)
    cond = Conditioning(torch.empty(1, 1, 1024, **meta), torch.empty(1, 4, h, w, **meta), torch.empty(1, 3, **meta), frames)
    sigma = torch.full((1,), 700.0, device="meta")
    all_parameters = [*unet.parameters(), *encoder.parameters(), *heads.parameters()]
    shared = not list(encoder.parameters())
    recompute = adapters.recompute if adapters is not None else None
    encoder_modules = () if shared else (encoder,)  # a shared encoder is checkpointed as part of the UNet

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

    with _bf16_compute(unet):
        original_sdpa = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = fused_sdpa
        try:
            g = activation_bytes(g_phase, all_parameters, (unet, *encoder_modules), recompute)
            d_r1 = activation_bytes(lambda: d_phase(3), all_parameters, encoder_modules or (unet,), recompute)
        finally:
            F.scaled_dot_product_attention = original_sdpa
        r1 = activation_bytes(r1_phase, all_parameters, encoder_modules or (unet,), recompute)  # math attention: double backward
    return {"G phase": g, "D phase with approximate R1 (default)": d_r1, "D phase with exact R1 (math attention)": r1}


class _bf16_compute:
    """Meta-device stand-in for autocast: fp32 weights of a LoRA base computed in bf16, as on a GPU."""

    def __init__(self, unet):
        self.unet, self.dtypes = unet, None

    def __enter__(self):
        self.dtypes = {name: p.dtype for name, p in self.unet.named_parameters()}
        self.unet.to(torch.bfloat16)

    def __exit__(self, *exc):
        for name, p in self.unet.named_parameters():
            p.data = p.data.to(self.dtypes[name])


def static_bytes(unet, encoder, heads, adapters) -> dict:
    count = lambda params: sum(p.numel() for p in params)
    head_params = count(heads.parameters())
    if adapters is None:
        trained, frozen = count(unet.parameters()), count(encoder.parameters())
        return {
            "UNet: weights + grads + Adam m, v (fp32, 16 B/param)": 16 * trained,
            "EMA of the trained weights (fp32)": 4 * trained,
            "frozen encoder copy (bf16)": 2 * frozen,
            "heads: weights + grads + Adam (fp32)": 16 * head_params,
        }
    trained = count(adapters.parameters())
    base = count(unet.parameters()) - trained
    return {
        "frozen UNet base, shared with the encoder (fp32)": 4 * base,
        "LoRA adapters: weights + grads + Adam m, v (fp32)": 16 * trained,
        "EMA of the trained weights (fp32)": 4 * trained,
        "heads: weights + grads + Adam (fp32)": 16 * head_params,
    }


def estimate(args) -> None:
    on_the_fly = 2 * (97_700_000 + 632_000_000)  # VAE + CLIP in bf16, only without a latent cache
    report = {"method": "meta device, one clip of 14 frames per device, bf16 activations, latent cache; GB before allocator overhead and the CUDA context"}
    for adapter in ("full", "lora"):
        label = "full fine-tune" if adapter == "full" else f"LoRA rank {args.rank} (attention + feed-forward)"
        entry = None
        for width, height in ((768, 448), (512, 288)):
            # Fresh modules per size: checkpointing, once enabled, stays on the modules.
            unet, encoder, heads, adapters = meta_modules(adapter=adapter, rank=args.rank)
            static = static_bytes(unet, encoder, heads, adapters)
            if entry is None:
                entry = {"parameters": {"UNet": sum(p.numel() for p in unet.parameters()), "encoder copy": sum(p.numel() for p in encoder.parameters()),
                                        "heads": sum(p.numel() for p in heads.parameters()),
                                        **({"trained adapters": sum(p.numel() for p in adapters.parameters())} if adapters else {})},
                         "static_gb": {k: round(v / GB, 2) for k, v in static.items()}, "sizes": {}}
            acts = step_activations(unet, encoder, heads, adapters, width, height)
            peak = lambda kind, r1_key="D phase with approximate R1 (default)": sum(static.values()) + max(acts["G phase"][kind], acts[r1_key][kind])
            entry["sizes"][f"{width}x{height}x14"] = {
                "activations_gb": {phase: {k: round(v / GB, 2) for k, v in a.items()} for phase, a in acts.items()},
                "peak_gb": {
                    "checkpointing, approximate R1": round(peak("checkpointed") / GB, 1),
                    "checkpointing, approximate R1, on-the-fly encoding": round((peak("checkpointed") + on_the_fly) / GB, 1),
                    "no checkpointing, approximate R1": round(peak("plain") / GB, 1),
                    "checkpointing, exact R1": round(peak("checkpointed", "D phase with exact R1 (math attention)") / GB, 1),
                },
            }
        report[label] = entry
    print(json.dumps(report, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--estimate", action="store_true", help="paper-size memory estimate on the meta device")
    parser.add_argument("--rank", type=int, default=32, help="--estimate: the LoRA rank")
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
