"""The GPU fast path at full size: one prepared run, under 5 minutes on one GPU, nothing but the repo.

    python benchmarks/bench_gpu.py                  # CUDA GPU: FULL SVD architecture, random bf16 weights,
                                                    # 14 frames at 1024x576
    python benchmarks/bench_gpu.py --dry-run        # the same code path on the CPU in seconds (tiny model,
                                                    # 64x64, 4 frames, no compile): checks the script, measures nothing useful

One JSON line per measurement: CLIP, VAE encode, the UNet pass (eager, compiled, CUDA graph,
compiled + CUDA graph), the temporal decode in chunks of 14 and of 7 (eager and compiled), the
tiny decoder when `sfv_core.tiny_decoder` exists, and image-to-frames end to end (full and
tiny decoder), each with its peak GPU memory. Times are the median of --repeats runs after a
warm-up, with the GPU synchronised around each; compile times are reported on their own.
Random weights: the numbers are about time and memory, not picture quality. Parts that would
run past --budget-s are skipped, and say so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sfv_core import conditioning, decoding, sampling  # noqa: E402
from sfv_core.acceleration import CompiledCall, GraphedCall  # noqa: E402
from sfv_core.models import FULL, TINY, build_random_model  # noqa: E402
from sfv_core.pipeline import SFVPipeline  # noqa: E402
from sfv_core.runtime import describe, move, resolve_runtime  # noqa: E402

DRY_RUN = dict(device="cpu", config="tiny", width=64, height=64, frames=4, compile="off", repeats=1)


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


class Clock:
    """Times on the device (synchronised), peak memory per measurement, the overall budget."""

    def __init__(self, device: torch.device, budget_s: float):
        self.device, self.deadline = device, time.perf_counter() + budget_s

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, function):
        self.sync()
        start = time.perf_counter()
        result = function()
        self.sync()
        return result, time.perf_counter() - start

    def measure(self, function, repeats: int) -> dict:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        _, first = self.once(function)  # warm-up (and the compile or the capture where there is one)
        times = [self.once(function)[1] for _ in range(repeats)]
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        return {"seconds": round(statistics.median(times), 4), "first_call_s": round(first, 3), "peak_gb": None if peak is None else round(peak, 3)}

    def has_time(self, part: str) -> bool:
        if time.perf_counter() < self.deadline:
            return True
        emit(part=part, skipped="past --budget-s")
        return False


def build_model(config: str, device: torch.device, dtype: torch.dtype):
    """Random weights of the real classes, built straight on the device (seconds on a GPU)."""
    with torch.device(device):
        model = build_random_model({"tiny": TINY, "full": FULL}[config])
    for module in model.modules.values():
        move(module, device, dtype)
    return model


def unet_inputs(model, cond, device, dtype):
    """What the one step feeds the UNet: the noised latent beside the image latent, c_noise, embeddings."""
    x = sampling.draw_noise(cond.latent_shape, sampling.seeded_generator(0)).to(device) * sampling.SIGMA_MAX
    sample, c_noise = sampling.unet_input(x, sampling.SIGMA_MAX, cond)
    args = (sample.to(dtype), c_noise)
    kwargs = dict(encoder_hidden_states=cond.image_embeds.to(dtype), added_time_ids=cond.added_time_ids.to(dtype), return_dict=False)
    return args, kwargs


def bench_unet(clock, model, runtime, cond, args) -> None:
    unet = model.unet
    inputs, kwargs = unet_inputs(model, cond, runtime.device, runtime.dtype)
    with torch.no_grad():
        eager = unet(*inputs, **kwargs)[0]
        variants = {"eager": unet}
        if args.compile != "off":
            variants["compiled"] = CompiledCall(unet, args.compile, "UNet")
        if runtime.device.type == "cuda":
            variants["cuda_graph"] = GraphedCall(unet, unet)
            if "compiled" in variants:
                variants["compiled_cuda_graph"] = GraphedCall(variants["compiled"], unet)
        for name, call in variants.items():
            if not clock.has_time(f"unet_{name}"):
                return
            # A graphed call runs as it is the first time and is captured the second: two
            # warm-ups, so that the timed calls are replays.
            if isinstance(call, GraphedCall):
                call(*inputs, **kwargs)
            result = clock.measure(lambda: call(*inputs, **kwargs), args.repeats)
            difference = (call(*inputs, **kwargs)[0].float() - eager.float()).abs().max().item()
            emit(part=f"unet_{name}", frames=args.frames, size=f"{args.width}x{args.height}", max_abs_diff_vs_eager=difference, **result)


def bench_decode(clock, model, runtime, args) -> None:
    latents = torch.randn(1, args.frames, 4, args.height // 8, args.width // 8, generator=torch.Generator().manual_seed(1))
    eager = decoding.vae_decoder(model.vae)
    for chunk in (14, 7):
        variants = {"eager": eager}
        if args.compile != "off":
            variants["compiled"] = CompiledCall(eager, args.compile, "temporal decoder")
        for name, decoder in variants.items():
            if not clock.has_time(f"decode_chunk{chunk}_{name}"):
                return
            result = clock.measure(lambda: decoding.decode_latents(model.vae, latents, chunk, decoder=decoder), args.repeats)
            emit(part=f"decode_chunk{chunk}_{name}", frames=args.frames, size=f"{args.width}x{args.height}", **result)


def tiny_decoder_module():
    """sfv_core.tiny_decoder where this checkout has it (it is being added in parallel)."""
    if importlib.util.find_spec("sfv_core.tiny_decoder") is None:
        return None
    from sfv_core import tiny_decoder

    return tiny_decoder


def bench_tiny_decode(clock, runtime, args):
    tiny = tiny_decoder_module()
    if tiny is None:
        emit(part="decode_tiny", skipped="sfv_core.tiny_decoder is not in this checkout")
        return None
    if not clock.has_time("decode_tiny"):
        return None
    decoder = tiny.TinyDecoder(tiny.FULL_CONFIG).to(runtime.device, runtime.vae_dtype).train(False)
    latents = torch.randn(1, args.frames, 4, args.height // 8, args.width // 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        result = clock.measure(lambda: tiny.decode_latents(decoder, latents), args.repeats)
    emit(part="decode_tiny", frames=args.frames, size=f"{args.width}x{args.height}", **result)
    return lambda latents_: tiny.decode_latents(decoder, latents_)


def bench_encoders(clock, model, pipe, image, args) -> None:
    pixels = conditioning.resize_images(image, args.width, args.height).to(pipe.runtime.device, pipe.runtime.vae_dtype) * 2 - 1
    clip_input = conditioning._normalize_for_clip((conditioning.resize_antialiased(pixels.float(), (224, 224)) + 1) / 2).to(pipe.runtime.dtype)
    with torch.no_grad():
        emit(part="clip", **clock.measure(lambda: model.image_encoder(pixel_values=clip_input), args.repeats))
        emit(part="vae_encode", size=f"{args.width}x{args.height}", **clock.measure(lambda: model.vae.encode(pixels).latent_dist.mode(), args.repeats))


def bench_end_to_end(clock, pipe, image, settings, tiny_decode, args) -> None:
    if clock.has_time("end_to_end"):
        result = clock.measure(lambda: pipe.generate(image, seed=0, chunk_frames=14, **settings), args.repeats)
        emit(part="end_to_end", decoder="temporal, chunks of 14", compile=pipe.runtime.compile, cuda_graphs=pipe.runtime.cuda_graphs, **result)
    if tiny_decode is not None and clock.has_time("end_to_end_tiny"):
        def generate_tiny():
            cond, _ = pipe.condition(image, **settings)
            return tiny_decode(pipe.sample(cond, seed=0))

        emit(part="end_to_end_tiny", decoder="tiny", compile=pipe.runtime.compile, cuda_graphs=pipe.runtime.cuda_graphs, **clock.measure(generate_tiny, args.repeats))


def start_image() -> torch.Tensor:
    from sfv_core.video_io import load_image

    return conditioning.to_rgb(load_image(ROOT / "sfv_core" / "assets" / "start.png"))


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--dry-run", action="store_true", help="the whole script on the CPU in seconds: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in DRY_RUN.items()))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", choices=["tiny", "full"], default="full")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--dtype", default="auto", help="auto: bf16 on Ampere and newer")
    parser.add_argument("--compile", choices=["off", "default", "max-autotune"], default="default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip the parts that would start after this many seconds")
    args = parser.parse_args(argv)
    if args.dry_run:
        for name, value in DRY_RUN.items():
            setattr(args, name, value)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU on this machine, nothing measured. Run it on a GPU machine, or check the "
              "script's code path here with --dry-run (or --device cpu --config tiny).", file=sys.stderr)
        return 2
    clock = Clock(device, args.budget_s)
    runtime = resolve_runtime(device, args.dtype, "auto", "sdpa", args.compile)
    emit(part="setup", device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", torch=torch.__version__,
         config=args.config, runtime=describe(runtime))
    model, build_s = clock.once(lambda: build_model(args.config, device, runtime.dtype))
    emit(part="build_random_weights", config=args.config, seconds=round(build_s, 2))
    pipe = SFVPipeline(model, runtime)
    image = start_image()
    settings = dict(width=args.width, height=args.height, num_frames=args.frames)
    with torch.no_grad():
        cond, _ = pipe.condition(image, **settings)
    bench_encoders(clock, model, pipe, image, args)
    bench_unet(clock, model, runtime, cond, args)
    bench_decode(clock, model, runtime, args)
    tiny_decode = bench_tiny_decode(clock, runtime, args)
    bench_end_to_end(clock, pipe, image, settings, tiny_decode, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
