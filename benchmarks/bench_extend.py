"""Long clips by extension, measured in the miniature (the bundled toy SF-V model, 64x64, 8 frames).

  python benchmarks/bench_extend.py quality --out outputs/bench_extend   # methods, seams, drift (+ seam strip)
  python benchmarks/bench_extend.py memory                               # peak RSS, 28 vs 224 frames
  python benchmarks/bench_extend.py decoder-edges                        # mean colour per frame position

quality: the held-out start frames of the miniature's data, each extended to 8 chained clips by
every method, all through `sfv_core.extend`. For each method:
- seams: at the transitions into, through and out of each overlap (the seams), the miniature's
  motion measure (`toy.metric.motion`: mean |frame t - frame t-1|) and the mean frame-to-frame
  colour difference (|mean RGB of frame t - of frame t-1|), against the same at all other
  transitions (clip interiors) and at all transitions of one ordinary clip; bar: at most 1.5x;
- drift: each of the 8 clip windows against clip 1: the FVD proxy (`toy.metric`) and the mean
  background colour (per-channel median over the frame: the shapes cover a minority of pixels);
  bounds: one clip's own generation error, i.e. the same measures of clip 1 against the real
  held-out clips. Real long videos of the same data (the generator plays on) give the floor.
memory: `python -m sfv_core generate --length N` run in a fresh spawned process per measurement,
28 and 224 frames alternated, peak RSS (VmHWM) of each.
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

CLIP_FRAMES, SIZE, CLIPS = 8, 64, 8
METHODS = {  # name: (overlap, overlap_denoise, crossfade[, condition frame])
    "last frame only": (1, 1.0, "pixel"),
    "overlap 2, re-noise 70.54, pixel cross-fade": (2, 2 / 3, "pixel"),
    "overlap 2, re-noise 70.54, latent cross-fade": (2, 2 / 3, "latent"),
    "overlap 2, re-noise 2.27, pixel cross-fade": (2, 1 / 3, "pixel"),
    "overlap 2, re-noise 2.27, latent cross-fade": (2, 1 / 3, "latent"),
    "overlap 4, re-noise 70.54, pixel cross-fade": (4, 2 / 3, "pixel"),
    "overlap 2, re-noise 70.54, pixel cross-fade, first shared frame": (2, 2 / 3, "pixel", "first_shared"),
    "overlap 4, re-noise 70.54, pixel cross-fade, first shared frame": (4, 2 / 3, "pixel", "first_shared"),
}


def length_for(overlap: int) -> int:
    return CLIP_FRAMES + (CLIPS - 1) * (CLIP_FRAMES - overlap)


def seam_transitions(overlap: int, length: int) -> list[int]:
    """Indices t of the transitions (t-1 -> t) into, through and out of each overlap."""
    step = CLIP_FRAMES - overlap
    return [t for k in range(1, CLIPS) for t in range(k * step, k * step + overlap + 1) if 0 < t < length]


def transition_measures(videos: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, L, H, W, 3) -> per transition t (index t-1 -> t), averaged over videos."""
    diff = videos[:, 1:] - videos[:, :-1]
    motion = diff.abs().mean(dim=(0, 2, 3, 4))
    colour = (videos[:, 1:].mean(dim=(2, 3)) - videos[:, :-1].mean(dim=(2, 3))).abs().mean(dim=(0, 2))
    pad = torch.zeros(1)
    return {"motion": torch.cat([pad, motion]), "colour": torch.cat([pad, colour])}


def seam_ratios(videos: torch.Tensor, overlap: int, one_clip: dict[str, float]) -> dict:
    """Each measure at the seams against two references: the other transitions of the long video
    (clip interiors) and `one_clip`, all transitions of ordinary one-step clips of the same start
    frames (with their own first and last frames)."""
    length = videos.shape[1]
    seams = seam_transitions(overlap, length)
    inside = [t for t in range(1, length) if t not in seams]
    out = {}
    for name, values in transition_measures(videos).items():
        seam, within, whole = float(values[seams].mean()), float(values[inside].mean()), one_clip[name]
        out[name] = {"seam": seam, "inside": within, "ratio": seam / within, "clip": whole, "ratio_clip": seam / whole}
    return out


def clip_windows(videos: torch.Tensor, overlap: int) -> list[torch.Tensor]:
    """The frames of each of the CLIPS clips, (N, CLIP_FRAMES, H, W, 3) each."""
    step = CLIP_FRAMES - overlap
    return [videos[:, k * step : k * step + CLIP_FRAMES] for k in range(CLIPS)]


def background_colour(clips: torch.Tensor) -> torch.Tensor:
    """(N, F, H, W, 3) -> (N, 3): per-channel median over each frame's pixels, averaged over frames."""
    return clips.flatten(2, 3).median(dim=2).values.mean(dim=1)


def drift(videos: torch.Tensor, overlap: int, features) -> dict:
    from sfv_core.toy import metric

    windows = clip_windows(videos, overlap)
    first_features, first_colour = features(windows[0]), background_colour(windows[0])
    return {
        "fvd_proxy_vs_clip1": [metric.frechet_distance(features(w), first_features) for w in windows],
        "background_colour_vs_clip1": [float((background_colour(w) - first_colour).abs().mean()) for w in windows],
    }


def run_method(pipe, images, name, seed) -> torch.Tensor:
    from sfv_core.extend import ExtendSettings, generate_long

    overlap, level, crossfade, *condition_frame = METHODS[name]
    settings = ExtendSettings(clip_frames=CLIP_FRAMES, overlap=overlap, overlap_denoise=level, crossfade=crossfade, condition_frame=(condition_frame or ["last"])[0])
    condition = dict(width=SIZE, height=SIZE, fps=7, motion_bucket_id=127, augmentation=0.02)
    return torch.cat(list(generate_long(pipe, images, length_for(overlap), seed, settings, condition)), dim=1)


def seam_strip(videos_by_method: dict, path: Path, video: int = 0, scale: int = 2) -> Path:
    """Rows: methods; columns: the frames from 3 before the first seam's overlap to 3 after it."""
    from PIL import Image, ImageDraw

    rows = []
    for name, videos in videos_by_method.items():
        overlap = METHODS[name][0]
        start = CLIP_FRAMES - overlap
        frames = videos[video, start - 3 : start + overlap + 3]
        rows.append(torch.cat(list(frames), dim=1))
    width = max(row.shape[1] for row in rows)
    rows = [torch.nn.functional.pad(row, (0, 0, 0, width - row.shape[1]), value=1.0) for row in rows]
    grid = (torch.cat(rows, dim=0).clamp(0, 1) * 255).round().byte().numpy()
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    label_width = 330
    canvas = Image.new("RGB", (image.width + label_width, image.height), "white")
    canvas.paste(image, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    for index, name in enumerate(videos_by_method):
        draw.text((6, index * SIZE * scale + SIZE * scale // 2 - 6), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def quality(args) -> dict:
    from sfv_core.cli import TOY_CHECKPOINT
    from sfv_core.pipeline import SFVPipeline
    from sfv_core.toy import data as toy_data
    from sfv_core.toy import metric

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    pipe = SFVPipeline.from_files(str(TOY_CHECKPOINT), device="cpu")
    longest = max(length_for(overlap) for overlap in [0, *(m[0] for m in METHODS.values())])
    real_long = toy_data.to_float(toy_data.generate_split("heldout", args.videos, longest, SIZE))
    images = real_long[:, 0]
    features = metric.video_features
    results = {"videos": args.videos, "clips": CLIPS, "clip_frames": CLIP_FRAMES, "size": SIZE, "threads": args.threads, "methods": {}}
    real_first = real_long[:, :CLIP_FRAMES]
    results["real"] = drift(real_long[:, : length_for(0)], 0, features)
    condition = dict(width=SIZE, height=SIZE, fps=7, motion_bucket_id=127, augmentation=0.02)
    ordinary = pipe.generate(images, seed=args.seed, num_frames=CLIP_FRAMES, **condition).frames
    one_clip = {name: float(values[1:].mean()) for name, values in transition_measures(ordinary).items()}
    results["one_clip"] = one_clip
    videos_by_method = {}
    for name in METHODS if not args.methods else args.methods:
        t0 = time.perf_counter()
        videos = run_method(pipe, images, name, args.seed)
        overlap = METHODS[name][0]
        row = {"seams": seam_ratios(videos, overlap, one_clip), "drift": drift(videos, overlap, features), "seconds": time.perf_counter() - t0}
        first = clip_windows(videos, overlap)[0]
        row["bounds"] = {
            "fvd_proxy_clip1_vs_real": metric.frechet_distance(features(first), features(real_first)),
            "background_colour_clip1_vs_real": float((background_colour(first) - background_colour(real_first)).abs().mean()),
        }
        row["bars"] = {
            "seam motion <= 1.5 x clip interiors": row["seams"]["motion"]["ratio"] <= 1.5,
            "seam colour change <= 1.5 x clip interiors": row["seams"]["colour"]["ratio"] <= 1.5,
            "seam motion <= 1.5 x one clip": row["seams"]["motion"]["ratio_clip"] <= 1.5,
            "seam colour change <= 1.5 x one clip": row["seams"]["colour"]["ratio_clip"] <= 1.5,
            "FVD proxy clip 8 vs clip 1 <= clip 1 vs real": row["drift"]["fvd_proxy_vs_clip1"][-1] <= row["bounds"]["fvd_proxy_clip1_vs_real"],
            "background colour clip 8 vs clip 1 <= clip 1 vs real": row["drift"]["background_colour_vs_clip1"][-1] <= row["bounds"]["background_colour_clip1_vs_real"],
        }
        results["methods"][name] = row
        videos_by_method[name] = videos
        print(name, json.dumps(row, indent=None), flush=True)
    results["seconds"] = time.perf_counter() - started
    results["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    if args.strip:
        print(seam_strip(videos_by_method, Path(args.strip)))
    return results


def table(results: dict) -> str:
    lines = ["| method | motion: seam / clip interiors, / one clip | colour change: seam / clip interiors, / one clip | FVD proxy clip 8 vs 1 (bound) | background colour clip 8 vs 1 (bound) | bars met |", "|---|---|---|---|---|---|"]
    for name, row in results["methods"].items():
        seams, drift_, bounds = row["seams"], row["drift"], row["bounds"]
        lines.append(
            f"| {name} | {seams['motion']['seam']:.4f} / {seams['motion']['inside']:.4f} = **{seams['motion']['ratio']:.2f}**, / {seams['motion']['clip']:.4f} = **{seams['motion']['ratio_clip']:.2f}** "
            f"| {seams['colour']['seam']:.4f} / {seams['colour']['inside']:.4f} = **{seams['colour']['ratio']:.2f}**, / {seams['colour']['clip']:.4f} = **{seams['colour']['ratio_clip']:.2f}** "
            f"| {drift_['fvd_proxy_vs_clip1'][-1]:.3f} ({bounds['fvd_proxy_clip1_vs_real']:.3f}) "
            f"| {drift_['background_colour_vs_clip1'][-1]:.4f} ({bounds['background_colour_clip1_vs_real']:.4f}) "
            f"| {sum(row['bars'].values())}/{len(row['bars'])} |"
        )
    curve = lambda values, digits: ", ".join(f"{v:.{digits}f}" for v in values)
    lines.append("")
    lines.append(f"- real videos (floor): FVD proxy clip k vs 1: {curve(results['real']['fvd_proxy_vs_clip1'], 3)}; background colour: {curve(results['real']['background_colour_vs_clip1'], 4)}")
    for name, row in results["methods"].items():
        lines.append(f"- {name}: FVD proxy clip k vs 1: {curve(row['drift']['fvd_proxy_vs_clip1'], 3)}; background colour: {curve(row['drift']['background_colour_vs_clip1'], 4)}")
    return "\n".join(lines)


# ---- the toy decoder's clip edges -------------------------------------------------------------


def decoder_edges(args) -> dict:
    """Mean colour per frame position of decoded clips: the VAE's reconstructions of real
    held-out clips, and one-step clips of their first frames, against the real frames."""
    from sfv_core.cli import TOY_CHECKPOINT
    from sfv_core.extend import encode_frames
    from sfv_core.pipeline import SFVPipeline
    from sfv_core.toy import data as toy_data

    torch.set_num_threads(args.threads)
    pipe = SFVPipeline.from_files(str(TOY_CHECKPOINT), device="cpu")
    real = toy_data.to_float(toy_data.generate_split("heldout", args.videos, CLIP_FRAMES, SIZE))
    generated = pipe.generate(real[:, 0], seed=0, width=SIZE, height=SIZE, num_frames=CLIP_FRAMES, fps=7, motion_bucket_id=127, augmentation=0.02).frames
    per_frame = lambda clips: [round(float(v), 4) for v in clips.mean(dim=(0, 2, 3, 4))]
    results = {"real": per_frame(real), "reconstructed": per_frame(pipe.decode(encode_frames(pipe.model, real))), "generated": per_frame(generated)}
    print(json.dumps(results, indent=1))
    return results


# ---- memory ----------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def generate_in_child(argv: list[str], threads: int, queue) -> None:
    torch.set_num_threads(threads)
    from sfv_core.cli import main

    started = time.perf_counter()
    code = main(argv)
    queue.put({"exit": code, "seconds": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes()})


def memory(args) -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per measurement
    out = Path(args.out)
    runs = {length: [] for length in args.lengths}
    load_before = os.getloadavg()[0]
    for round_index in range(args.rounds):
        for length in args.lengths:
            argv = ["generate", "--length", str(length), "--overlap", str(args.overlap), "--width", str(args.size), "--height", str(args.size),
                    "--out", str(out / f"memory_{length}.{args.format}")]
            queue = context.Queue()
            child = context.Process(target=generate_in_child, args=(argv, args.threads, queue))
            child.start()
            result = queue.get()
            child.join()
            runs[length].append(result)
            print(length, result, flush=True)
    peaks = {length: min(r["peak_rss_bytes"] for r in rows) for length, rows in runs.items()}
    short, long_ = peaks[min(peaks)], peaks[max(peaks)]
    results = {"size": args.size, "overlap": args.overlap, "format": args.format, "threads": args.threads, "runs": {str(k): v for k, v in runs.items()},
               "peak_rss_mib": {str(k): v / 2**20 for k, v in peaks.items()}, "ratio_long_over_short": long_ / short,
               "bar_within_10_percent": abs(long_ / short - 1) <= 0.10, "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"memory_{args.size}.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=1))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality", allow_abbrev=False)
    q.add_argument("--videos", type=int, default=32, help="held-out start frames (one long video each)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--methods", nargs="*", choices=list(METHODS), help="default: all")
    q.add_argument("--strip", help="also write the seam strip image here (e.g. docs/extend_seam.png)")
    q.add_argument("--out", default="outputs/bench_extend")
    e = sub.add_parser("decoder-edges", allow_abbrev=False)
    e.add_argument("--videos", type=int, default=16)
    e.add_argument("--threads", type=int, default=1)
    m = sub.add_parser("memory", allow_abbrev=False)
    m.add_argument("--lengths", type=int, nargs="+", default=[28, 224])
    m.add_argument("--overlap", type=int, default=4, help="4: clips of 8 add 4 frames, so 28 and 224 are both reachable")
    m.add_argument("--size", type=int, default=64)
    m.add_argument("--format", default="webp")
    m.add_argument("--rounds", type=int, default=2)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--out", default="outputs/bench_extend")
    args = parser.parse_args(argv)
    {"quality": quality, "decoder-edges": decoder_edges, "memory": memory}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
