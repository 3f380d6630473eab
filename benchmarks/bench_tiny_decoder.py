"""The tiny decoder against SVD's temporal VAE decoder (issue 13). Prints one JSON line per measurement.

    python benchmarks/bench_tiny_decoder.py speed   [--shapes 14x256x144,4x1024x576] [--rounds 2] [--repeats 2]
    python benchmarks/bench_tiny_decoder.py stream  [--frames 14,56,224] [--chunk 7]

speed: the tiny decoder's full-size config (tiny_decoder.FULL_CONFIG) against diffusers'
AutoencoderKLTemporalDecoder at SVD's full config (models.FULL.vae), random weights, each
decoding a whole clip of raw latents of the given shape (frames x width x height). Bars:
tiny >= 20x faster, peak decode memory <= 1/10. The sides alternate round by round, so load on
the shared machine hits both alike.
stream: tiny decoder streaming 7 frames at a time through clips of 14, 56, 224 frames; bars:
peak memory flat within 10% across the lengths, and streamed frames == one parallel pass.

Memory, honestly on a CPU: every measurement runs in a fresh process (multiprocessing, spawn);
after the model and latents exist the process resets its peak RSS (Linux: `5` into
/proc/self/clear_refs) and reads VmRSS; the decode's working memory is VmHWM (peak RSS) after
the decode minus that baseline. So it counts everything the decode allocates (activations,
the output frames of `speed`; `stream` discards each chunk as a video writer would), not the
weights. Before the baseline each process decodes one 64x64 frame (kernel code is loaded), and
glibc's mmap threshold is fixed at 1 MiB so freed tensors leave RSS (MALLOC_MMAP_THRESHOLD_). Random weights: the numbers are about time and memory, not picture quality.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfv_core import decoding, tiny_decoder  # noqa: E402
from sfv_core.models import FULL, VAE_SCALING_FACTOR, build_vae  # noqa: E402


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the peak RSS to the current RSS; returns the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return status_kib("VmRSS") * 1024


def peak_rss() -> int:
    return status_kib("VmHWM") * 1024


def raw_latents(frames: int, width: int, height: int) -> torch.Tensor:
    # Raw VAE latents have std ~ 1 / scaling factor.
    return torch.randn(1, frames, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(1)) / VAE_SCALING_FACTOR


def build(side: str):
    torch.manual_seed(0)
    if side == "full":
        return build_vae(FULL.vae).train(False).requires_grad_(False)
    return tiny_decoder.TinyDecoder(tiny_decoder.FULL_CONFIG).train(False).requires_grad_(False)


def warm_up(side: str, model) -> None:
    """One 1-frame 64x64 decode before the baseline: loads the conv kernels' code (shared
    library pages count in RSS) so that the first measured decode does not pay for it."""
    decode_whole(side, model, raw_latents(1, 64, 64))


def decode_whole(side: str, model, latents: torch.Tensor) -> torch.Tensor:
    if side == "full":
        return decoding.decode_latents(model, latents)
    return tiny_decoder.decode_latents(model, latents)


def _speed_child(side: str, frames: int, width: int, height: int, repeats: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    model, latents = build(side), raw_latents(frames, width, height)
    warm_up(side, model)
    seconds, working = [], 0
    for _ in range(repeats):
        baseline = reset_peak_rss()
        start = time.perf_counter()
        out = decode_whole(side, model, latents)
        seconds.append(time.perf_counter() - start)
        working = max(working, peak_rss() - baseline)
        del out
    queue.put({"seconds": seconds, "working_bytes": working, "parameters": sum(p.numel() for p in model.parameters())})


def _stream_child(frames: int, chunk: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    model, latents = build("tiny"), raw_latents(frames, 256, 144)
    warm_up("tiny", model)
    baseline = reset_peak_rss()
    start = time.perf_counter()
    checksum = 0.0
    for _start, _end, chunk_frames in tiny_decoder.stream_frames(model, latents, chunk):
        checksum += float(chunk_frames.double().sum())  # consumed and dropped, as a video writer would
    queue.put({"seconds": time.perf_counter() - start, "working_bytes": peak_rss() - baseline, "checksum": checksum})


def _equality_child(frames: int, chunk: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    model, latents = build("tiny"), raw_latents(frames, 256, 144)
    parallel = tiny_decoder.decode_latents(model, latents)
    streamed = tiny_decoder.decode_latents(model, latents, chunk_frames=chunk)
    queue.put({"max_abs_difference": float((parallel - streamed).abs().max())})


def in_child(target, *args) -> dict:
    # A fixed mmap threshold: glibc then hands every large freed block back to the OS at once,
    # so RSS follows the live tensors instead of what the allocator happens to keep.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def parse_shape(text: str) -> tuple[int, int, int]:
    frames, width, height = (int(n) for n in text.split("x"))
    return frames, width, height


def bench_speed(args) -> None:
    for shape in args.shapes.split(","):
        frames, width, height = parse_shape(shape)
        big = width * height > 256 * 144 * 4
        rounds, repeats = (1, 1) if big else (args.rounds, args.repeats)
        results = {"full": [], "tiny": []}
        load = [round(os.getloadavg()[0], 2)]
        for round_index in range(rounds):
            for side in ("full", "tiny") if round_index % 2 == 0 else ("tiny", "full"):
                results[side].append(in_child(_speed_child, side, frames, width, height, repeats, args.threads))
                load.append(round(os.getloadavg()[0], 2))
        best = {side: min(s for r in rs for s in r["seconds"]) for side, rs in results.items()}
        memory = {side: max(r["working_bytes"] for r in rs) for side, rs in results.items()}
        emit(bench="speed", shape=f"{frames} frames {width}x{height}", threads=args.threads, rounds=rounds, repeats_per_process=repeats,
             full_seconds=round(best["full"], 3), tiny_seconds=round(best["tiny"], 3), speedup=round(best["full"] / best["tiny"], 1), speedup_bar=20,
             full_peak_working_gb=round(memory["full"] / 1e9, 3), tiny_peak_working_gb=round(memory["tiny"] / 1e9, 3),
             memory_ratio=round(memory["tiny"] / memory["full"], 4), memory_ratio_bar=0.1,
             full_parameters=results["full"][0]["parameters"], tiny_parameters=results["tiny"][0]["parameters"],
             all_seconds={side: [round(s, 3) for r in rs for s in r["seconds"]] for side, rs in results.items()},
             load_average_1min=load)


def bench_stream(args) -> None:
    lengths = [int(n) for n in args.frames.split(",")]
    load = [round(os.getloadavg()[0], 2)]
    working = {}
    for frames in lengths:
        result = in_child(_stream_child, frames, args.chunk, args.threads)
        working[frames] = result["working_bytes"]
        load.append(round(os.getloadavg()[0], 2))
        emit(bench="stream", frames=frames, chunk=args.chunk, size="256x144", seconds=round(result["seconds"], 3),
             seconds_per_frame=round(result["seconds"] / frames, 4), peak_working_mb=round(result["working_bytes"] / 1e6, 1))
    spread = max(working.values()) / min(working.values()) - 1
    equal = in_child(_equality_child, max(lengths), args.chunk, args.threads)
    emit(bench="stream_summary", lengths=lengths, chunk=args.chunk, peak_spread=round(spread, 4), peak_spread_bar=0.10,
         streamed_vs_parallel_max_abs_difference=equal["max_abs_difference"], equality_bar=1e-5, threads=args.threads, load_average_1min=load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("bench", choices=["speed", "stream"])
    parser.add_argument("--shapes", default="14x256x144,4x1024x576", help="frames x width x height, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds for small shapes (the 1024x576 shape runs one)")
    parser.add_argument("--repeats", type=int, default=2, help="decodes per process for small shapes; the fastest counts")
    parser.add_argument("--frames", default="14,56,224")
    parser.add_argument("--chunk", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    {"speed": bench_speed, "stream": bench_stream}[args.bench](args)


if __name__ == "__main__":
    main()
