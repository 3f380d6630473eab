"""Benchmarks of the inference engine (issue 2). Prints one JSON line per measurement.

    python benchmarks/bench_engine.py overhead  [--config tiny|full] [--width W --height H --frames F]
    python benchmarks/bench_engine.py diffusers [--config tiny|full] [--steps 25]
    python benchmarks/bench_engine.py load      [--file PATH]   (writes a random full-size fp16 file if absent)
    python benchmarks/bench_engine.py decode    [--config tiny|full] [--chunks 14,7,4,2] [--overlap 2]
    python benchmarks/bench_engine.py load-vs-comfyui --comfyui /path/to/ComfyUI [--file PATH] [--dtype float32]
                                                [--baseline /path/to/another/checkout/of/this/repo]

overhead: one-step end-to-end time / sum of the bare component forwards (CLIP, VAE encode,
UNet, VAE decode) at the same settings; the bar is 1.05.
diffusers: end-to-end speed-up over diffusers' StableVideoDiffusionPipeline at its defaults
(25 steps, guidance 1.0 -> 3.0), same weights and settings.
load: load time of a full-size single file vs reading its bytes (bar 1.5x); peak RSS vs model size (bar 1.3x).
load-vs-comfyui: the same file loaded by ComfyUI's load_checkpoint_guess_config (CPU) and by
sfv_core's load_model, each in a fresh process with its libraries imported first, sides
alternated; the bar is 1.0x ComfyUI's time and peak RSS at most 1.15x the model. Run it with the
Python that has ComfyUI's requirements; without --comfyui only sfv_core is measured, with a note.
decode: peak memory of temporal decode against chunk size; PSNR of chunked decode (with and
without overlap) against all-at-once decode.
Random weights throughout: the numbers are about time and memory, not picture quality.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sfv_core import conditioning, decoding, sampling  # noqa: E402
from sfv_core.models import FULL, TINY, build_random_model, build_vae  # noqa: E402
from sfv_core.pipeline import SFVPipeline  # noqa: E402


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median_time(function, repeats: int) -> float:
    function()  # warm-up: allocator, kernels, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def configs_named(name: str):
    return {"tiny": TINY, "full": FULL}[name]


def start_image() -> torch.Tensor:
    from sfv_core.video_io import load_image

    return conditioning.to_rgb(load_image(ROOT / "sfv_core" / "assets" / "start.png"))


def bench_overhead(args) -> None:
    pipe = SFVPipeline(build_random_model(configs_named(args.config)))
    model, image = pipe.model, start_image()
    settings = dict(width=args.width, height=args.height, num_frames=args.frames)
    cond, resized = pipe.condition(image, **settings)
    pixels = resized.movedim(-1, 1) * 2 - 1
    clip_input = conditioning._normalize_for_clip((conditioning.resize_antialiased(pixels, (224, 224)) + 1) / 2)
    x = sampling.draw_noise(cond.latent_shape, sampling.seeded_generator(0))
    unet_input = torch.cat([x, cond.image_latent.unsqueeze(1).expand_as(x)], dim=2)
    timestep = torch.tensor([0.25 * torch.log(torch.tensor(700.0))])
    latents = torch.randn(cond.latent_shape)

    with torch.no_grad():
        parts = {
            "clip": lambda: model.image_encoder(pixel_values=clip_input),
            "vae_encode": lambda: model.vae.encode(pixels).latent_dist.mode(),
            "unet": lambda: model.unet(unet_input, timestep, encoder_hidden_states=cond.image_embeds, added_time_ids=cond.added_time_ids, return_dict=False),
            "vae_decode": lambda: model.vae.decode(latents[0], num_frames=args.frames).sample,
        }
        timed = dict(parts, end_to_end=lambda: pipe.generate(image, seed=0, **settings))
        # Interleaved rounds, minimum per item (timeit's rule: the least disturbed run is the
        # truest cost); a shared CPU slows single runs, never speeds them up.
        for function in timed.values():
            function()  # warm-up
        runs = {name: [] for name in timed}
        for _ in range(args.repeats):
            for name, function in timed.items():
                start = time.perf_counter()
                function()
                runs[name].append(time.perf_counter() - start)
    part_times = {name: min(runs[name]) for name in parts}
    end_to_end = min(runs["end_to_end"])
    components = sum(part_times.values())
    emit(bench="overhead", config=args.config, size=f"{args.width}x{args.height}", frames=args.frames, threads=torch.get_num_threads(),
         parts_s={k: round(v, 4) for k, v in part_times.items()}, components_s=round(components, 4),
         end_to_end_s=round(end_to_end, 4), ratio=round(end_to_end / components, 4), bar=1.05, rounds=args.repeats,
         load_average_1min=round(os.getloadavg()[0], 2))


def bench_diffusers(args) -> None:
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from PIL import Image
    from transformers import CLIPImageProcessor

    model = build_random_model(configs_named(args.config))
    pipe = SFVPipeline(model)
    image = start_image()
    settings = dict(width=args.width, height=args.height, num_frames=args.frames)
    pil = Image.fromarray((conditioning.resize_images(image, args.width, args.height)[0].movedim(0, -1) * 255).round().byte().numpy())
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear", num_train_timesteps=1000,
        prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
        timestep_type="continuous", use_karras_sigmas=True,
    )
    processor = CLIPImageProcessor(image_mean=list(conditioning.CLIP_MEAN), image_std=list(conditioning.CLIP_STD), size=224, crop_size=224)
    reference = StableVideoDiffusionPipeline(vae=model.vae, image_encoder=model.image_encoder, unet=model.unet, scheduler=scheduler, feature_extractor=processor)
    reference.set_progress_bar_config(disable=True)

    def run_diffusers():
        reference(pil, height=args.height, width=args.width, num_frames=args.frames, num_inference_steps=args.steps,
                  min_guidance_scale=1.0, max_guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="pt")

    ours = median_time(lambda: pipe.generate(image, seed=0, **settings), args.repeats)
    theirs = median_time(run_diffusers, max(1, args.repeats // 2))
    emit(bench="vs_diffusers", config=args.config, size=f"{args.width}x{args.height}", frames=args.frames, diffusers_steps=args.steps,
         guidance="1.0->3.0", sfv_s=round(ours, 4), diffusers_s=round(theirs, 4), speedup=round(theirs / ours, 2))


def _write_full_size_file(path: Path) -> None:
    from sfv_core.checkpoints import save_single_file

    model = build_random_model(FULL)
    for module in model.modules.values():
        module.to(torch.float16)
    save_single_file(model, path)


def _read_in_child(path: str, keep: bool, queue) -> None:
    """Read every byte of the file: into one reused 64 MB buffer, or (keep) into memory it stays in."""
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        if keep:
            data = bytearray(os.path.getsize(path))
            view, filled = memoryview(data), 0
            while filled < len(data):
                filled += handle.readinto(view[filled : filled + (64 << 20)])
        else:
            buffer = bytearray(64 << 20)
            while handle.readinto(buffer):
                pass
    queue.put({"read_s": time.perf_counter() - start})


def _reporting(target, *args) -> None:
    """Run `target(*args, queue)`; an exception is reported through the queue, so the parent never waits forever."""
    queue = args[-1]
    try:
        target(*args)
    except BaseException as error:  # noqa: BLE001  reported, then re-raised in the parent
        queue.put({"error": f"{target.__name__}: {type(error).__name__}: {error}"})


def _in_child(target, *args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_reporting, args=(target, *args, queue))
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def bench_load(args) -> None:
    path = Path(args.file)
    if not path.exists():
        _write_full_size_file(path)
    _in_child(_read_in_child, str(path), False)  # warm the page cache for every measurement alike
    runs = {name: [] for name in ("read_reused", "read_kept", "load")}
    for _ in range(args.repeats):
        runs["read_reused"].append(_in_child(_read_in_child, str(path), False)["read_s"])
        runs["read_kept"].append(_in_child(_read_in_child, str(path), True)["read_s"])
        load = _in_child(_sfv_load_in_child, str(ROOT), str(path), "float16")
        runs["load"].append(load["load_s"])
    read_reused, read_kept, load_s = (statistics.median(runs[name]) for name in ("read_reused", "read_kept", "load"))
    model_gb = load["model_bytes"] / 1e9
    emit(bench="load", file_gb=round(path.stat().st_size / 1e9, 3), model_gb=round(model_gb, 3), repeats=args.repeats,
         read_into_reused_buffer_s=round(read_reused, 3), read_into_kept_memory_s=round(read_kept, 3), load_s=round(load_s, 3),
         time_ratio_vs_kept=round(load_s / read_kept, 3), time_ratio_vs_reused=round(load_s / read_reused, 3), time_bar=1.5,
         peak_rss_gb=round(load["peak_rss"] / 1e9, 3), rss_ratio=round(load["peak_rss"] / load["model_bytes"], 3), rss_bar=1.3,
         process_baseline_rss_gb=round(load["baseline_rss"] / 1e9, 3))


def _sfv_load_in_child(root: str, path: str, dtype: str, queue) -> None:
    """load_model of the sfv_core under `root` (this checkout, or a baseline one)."""
    for name in [name for name in sys.modules if name == "sfv_core" or name.startswith("sfv_core.")]:
        del sys.modules[name]  # the spawned child imported this checkout's sfv_core with this script
    sys.path.insert(0, root)
    import diffusers.models.autoencoders.vae  # noqa: F401
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel  # noqa: F401
    from transformers import CLIPVisionModelWithProjection  # noqa: F401

    from sfv_core.checkpoints import load_model

    baseline = peak_rss_bytes()
    start = time.perf_counter()
    model = load_model(path, dtype=getattr(torch, dtype))
    elapsed = time.perf_counter() - start
    size = sum(t.numel() * t.element_size() for m in model.modules.values() for t in m.state_dict().values())
    queue.put({"load_s": elapsed, "peak_rss": peak_rss_bytes(), "baseline_rss": baseline, "model_bytes": size})


def _comfyui_load_in_child(comfyui: str, path: str, queue) -> None:
    sys.path.insert(0, comfyui)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.sd

    baseline = peak_rss_bytes()
    start = time.perf_counter()
    model, _clip, vae, clip_vision = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=False, output_clipvision=True)
    elapsed = time.perf_counter() - start
    modules = [model.model, vae.first_stage_model, clip_vision.model]
    size = sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())
    queue.put({"load_s": elapsed, "peak_rss": peak_rss_bytes(), "baseline_rss": baseline, "model_bytes": size,
               "dtype": str(next(model.model.parameters()).dtype)})


def bench_load_vs_comfyui(args) -> None:
    path = Path(args.file)
    if not path.exists():
        _write_full_size_file(path)
    sides = {"sfv": (_sfv_load_in_child, str(ROOT), str(path), args.dtype)}
    if args.baseline:
        sides["sfv_baseline"] = (_sfv_load_in_child, args.baseline, str(path), args.dtype)
    if args.comfyui:
        sides["comfyui"] = (_comfyui_load_in_child, args.comfyui, str(path))
    else:
        emit(bench="load_vs_comfyui", note="ComfyUI not measured: pass --comfyui /path/to/ComfyUI and run with a Python that has its requirements")
    _in_child(_read_in_child, str(path), False)  # warm the page cache for every side alike
    runs = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, (target, *target_args) in sides.items():
            runs[name].append(_in_child(target, *target_args))
    record = dict(bench="load_vs_comfyui", file_gb=round(path.stat().st_size / 1e9, 3), sfv_dtype=args.dtype, repeats=args.repeats,
                  threads=torch.get_num_threads(), load_average_1min=round(os.getloadavg()[0], 2))
    for name, results in runs.items():
        record[f"{name}_load_s"] = round(statistics.median(r["load_s"] for r in results), 3)
        record[f"{name}_all_s"] = [round(r["load_s"], 2) for r in results]
        record[f"{name}_model_gb"] = round(results[0]["model_bytes"] / 1e9, 3)
        record[f"{name}_peak_rss_gb"] = round(max(r["peak_rss"] for r in results) / 1e9, 3)
        record[f"{name}_rss_ratio"] = round(max(r["peak_rss"] for r in results) / results[0]["model_bytes"], 3)
        record[f"{name}_rss_ratio_above_imports"] = round(max(r["peak_rss"] - r["baseline_rss"] for r in results) / results[0]["model_bytes"], 3)
    if "comfyui" in runs:
        record["comfyui_dtype"] = runs["comfyui"][0]["dtype"]
        record["time_ratio_sfv_vs_comfyui"] = round(record["sfv_load_s"] / record["comfyui_load_s"], 3)
        record["time_bar"], record["rss_bar"] = 1.0, 1.15
    emit(**record)


def _decode_in_child(config: str, frames: int, height: int, width: int, chunk: int, overlap: int, queue) -> None:
    torch.manual_seed(0)
    vae = build_vae(configs_named(config).vae).train(False)
    latents = torch.randn(1, frames, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(1))
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    out = decoding.decode_latents(vae, latents, chunk_frames=chunk, overlap=overlap)
    # numpy pickles by value; a torch tensor would cross as a shared-memory handle that dies with this process.
    queue.put({"frames": out.numpy(), "seconds": time.perf_counter() - start, "peak_rss": peak_rss_bytes(), "baseline_rss": baseline})


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a - b) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def bench_decode(args) -> None:
    whole = None
    plans = [(int(c), 0) for c in args.chunks.split(",")] + [(int(c), args.overlap) for c in args.chunks.split(",") if args.overlap < int(c) < args.frames]
    for chunk, overlap in plans:
        result = _in_child(_decode_in_child, args.config, args.frames, args.height, args.width, chunk, overlap)
        result["frames"] = torch.from_numpy(result["frames"])
        if whole is None:
            whole = result["frames"]
        emit(bench="decode", config=args.config, size=f"{args.width}x{args.height}", frames=args.frames, chunk=chunk, overlap=overlap,
             seconds=round(result["seconds"], 2), peak_working_gb=round((result["peak_rss"] - result["baseline_rss"]) / 1e9, 3),
             psnr_vs_all_at_once_db=round(psnr(result["frames"], whole), 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("bench", choices=["overhead", "diffusers", "load", "decode", "load-vs-comfyui"])
    parser.add_argument("--config", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--file", default="/tmp/sfv_full_fp16.safetensors")
    parser.add_argument("--chunks", default="14,7,4,2")
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--comfyui", help="load-vs-comfyui: root of a ComfyUI checkout (its requirements installed in this Python)")
    parser.add_argument("--baseline", help="load-vs-comfyui: root of another checkout of this repository, measured as a third side")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="load-vs-comfyui: sfv_core's load dtype")
    args = parser.parse_args()
    benches = {"overhead": bench_overhead, "diffusers": bench_diffusers, "load": bench_load, "decode": bench_decode, "load-vs-comfyui": bench_load_vs_comfyui}
    benches[args.bench](args)


if __name__ == "__main__":
    main()
