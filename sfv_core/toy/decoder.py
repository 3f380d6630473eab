"""The tiny decoder in miniature: distilled from the bundled toy model's temporal VAE decoder,
measured on held-out clips against that full decoder.

    python -m sfv_core.toy.decoder --out outputs/toy_decoder --ship   # the full run (see the README for its time)
    python -m sfv_core.toy.decoder --out /tmp/toy_decoder --quick     # a smoke run (seconds)

A separate step of the miniature: it starts from the shipped toy SF-V model
(sfv_core/assets/sfv_toy.safetensors, made by `toy.experiment --ship`) instead of rerunning it.
  1. data: training clips of `toy.data` (the miniature's own generator) as frame folders;
  2. distillation: `python -m sfv_core train-decoder`'s trainer with the toy model's VAE as the
     teacher, the tiny decoder at its full-size config (`tiny_decoder.FULL_CONFIG`), on the
     training clips' latents and (`generated_fraction` of the clips) the toy SF-V UNet's 1-step
     samples from the same clips' start frames (`generated.sfv_unet`);
  3. evaluation on the miniature's held-out split: SF-V 1 step (the toy model's UNet) decoded by
     the full decoder and by the tiny one: decode seconds per clip, PSNR and SSIM of the tiny
     decode against the full decode, and the FVD proxy of each against the real held-out clips
     and against the VAE's reconstructions of them; the same PSNR / SSIM on the VAE latents of
     the real held-out clips.
Writes results.json, table.md and samples.png (real, full decode, tiny decode of the first
held-out clips) into --out; --ship bundles the decoder into sfv_core/assets; --evaluate FILE
scores an existing decoder instead of distilling one.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import sampling, tiny_decoder
from ..errors import CheckpointError, InputError
from . import data as toy_data
from . import experiment, metric

log = logging.getLogger("sfv_core.toy")


@dataclass
class ToyDecoderConfig:
    train_clips: int = 512
    heldout_clips: int = 100  # the miniature's held-out split
    steps: int = 600
    batch_clips: int = 2
    lr: float = 2e-3
    # Share of the training clips replaced by SF-V samples (0: real-clip latents only, as the
    # runs before it: 25.3 dB against the full decode on generated latents, 30.3 on real ones).
    generated_fraction: float = 0.5
    # More train-decoder fields, as --set pairs (e.g. "loss.temporal_weight=3"), applied last.
    train_sets: tuple = ()
    seed: int = 0
    threads: int = 2

    @classmethod
    def quick(cls) -> "ToyDecoderConfig":
        return cls(train_clips=4, heldout_clips=6, steps=2, batch_clips=2)


def trainer_config(cfg: ToyDecoderConfig, checkpoint: Path, data_path: Path, out: Path):
    """The train-decoder config of the distillation (validated: a bad --set fails here, first)."""
    from ..train.config import load_config
    from ..train.decoder import DecoderTrainConfig

    toy = experiment.ToyConfig()
    sets = [
        f"model.path={checkpoint}", f"data.path={data_path}", f"data.latent_cache={out / 'latent_cache'}", f"run.output_dir={out}",
        f"num_frames={toy.num_frames}", f"fps={toy.fps}", f"width={toy.size}", f"height={toy.size}", "num_workers=0",
        f"batch_size={cfg.batch_clips}", f"optim.lr={cfg.lr}", f"run.steps={cfg.steps}", f"run.checkpoint_every={cfg.steps}",
        "run.mixed_precision=fp32", "run.export_dtype=fp16", "run.log_every=50", "run.resume=false", f"run.seed={cfg.seed}",
        *([f"generated.sfv_unet={checkpoint}", f"generated.fraction={cfg.generated_fraction}"] if cfg.generated_fraction > 0 else []),
        *cfg.train_sets,
    ]
    return load_config(None, sets, DecoderTrainConfig).validate()


def distil(train_cfg) -> tuple[Path, float]:
    """Train and export with the project's trainer; returns (the decoder file, seconds)."""
    from ..train.decoder import DecoderTrainer

    started = time.perf_counter()
    trainer = DecoderTrainer(train_cfg)
    trainer.train()
    (path,) = trainer.export()
    shutil.rmtree(Path(train_cfg.run.output_dir) / "checkpoints", ignore_errors=True)  # resumable state is not needed here
    return path, time.perf_counter() - started


def psnr(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per clip, in dB, of frames (N, F, H, W, 3) in [0, 1]."""
    mse = (frames - reference).square().mean(dim=(1, 2, 3, 4))
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-12))


@torch.no_grad()
def timed(decode, latents: torch.Tensor) -> tuple[torch.Tensor, float]:
    decode(latents[:2])  # warm-up: kernels, allocator
    started = time.perf_counter()
    frames = decode(latents)
    return frames, (time.perf_counter() - started) / len(latents)


def tiny_decode(decoder, model_latents: torch.Tensor, chunk_clips: int = 16) -> torch.Tensor:
    """Like experiment.decode (16 clips per pass, whole clips): the tiny decoder in parallel mode."""
    raw = sampling.to_raw_latent(model_latents)
    return torch.cat([frames for part in raw.split(chunk_clips) for _, _, frames in tiny_decoder.stream_frames(decoder, part, part.shape[1])])


@torch.no_grad()
def causal_teacher_decode(vae, model_latents: torch.Tensor) -> torch.Tensor:
    """Frame t of the full decoder run on frames <= t only: what the teacher gives without the
    frames after t, which no causal decoder sees (its temporal convs read both neighbours)."""
    return torch.stack([experiment.decode(vae, model_latents[:, : t + 1])[:, t] for t in range(model_latents.shape[1])], dim=1)


def compare(name: str, full: torch.Tensor, tiny: torch.Tensor) -> dict:
    clip_psnr = psnr(tiny, full)
    return {"latents": name, "psnr_db_mean": float(clip_psnr.mean()), "psnr_db_min": float(clip_psnr.min()), "ssim_mean": metric.ssim(tiny, full),
            "motion_ratio": metric.motion(tiny) / metric.motion(full)}


@torch.no_grad()
def heldout_latents(model, heldout: torch.Tensor, toy) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-space latents of the held-out clips (N, F, H, W, 3): the toy SF-V's 1-step samples
    from their start frames (the miniature's SF-V 1-step row: same seed, same sampler call), and
    the VAE encoder's latents of the clips themselves."""
    cond = experiment.condition_heldout(model, heldout, toy)
    generated = sampling.sample(model.unet, cond, sampling.seeded_generator(toy.seed + 1000), steps=1)
    encoded = torch.cat([model.vae.encode(c).latent_dist.mode() for c in experiment.to_vae_input(heldout).split(128)])
    return generated, sampling.to_model_space(encoded).unflatten(0, (len(heldout), toy.num_frames))


def evaluate(cfg: ToyDecoderConfig, checkpoint: Path, decoder_path: Path) -> tuple[dict, dict]:
    """The table's numbers, and the frames the samples image shows (held-out clips: real, full decode, tiny decode)."""
    toy = experiment.ToyConfig()
    model = experiment.load(checkpoint)
    decoder = tiny_decoder.load_tiny_decoder(decoder_path)
    tiny_decoder.check_fits(decoder, model.vae)
    heldout = toy_data.to_float(toy_data.generate_split("heldout", cfg.heldout_clips, toy.num_frames, toy.size))
    generated, encoded = heldout_latents(model, heldout, toy)
    full_frames, full_seconds = timed(lambda z: experiment.decode(model.vae, z), generated)
    tiny_frames, tiny_seconds = timed(lambda z: tiny_decode(decoder, z), generated)
    recon_full, recon_tiny = experiment.decode(model.vae, encoded), tiny_decode(decoder, encoded)
    causal_full = causal_teacher_decode(model.vae, generated)
    real_features, recon_features = metric.video_features(heldout), metric.video_features(recon_full)
    # The full decoder's last frame depends on the clip ending there (its temporal convs pad
    # past the end; the tiny decoder is told which frames end the clip): the distance without
    # it shows how much of the gap that frame is.
    recon_features_but_last = metric.video_features(recon_full[:, :-1])
    rows = []
    # The last three rows put the first two in context (not timed: None): what each decoder
    # makes of the real clips' own latents (the full one's is the reconstruction reference
    # itself), and the full decoder held to frames <= t, as a causal decoder is.
    for label, frames, seconds in (("SF-V 1 step + full decoder", full_frames, full_seconds), ("SF-V 1 step + tiny decoder", tiny_frames, tiny_seconds),
                                   ("SF-V 1 step + full decoder on frames <= t only", causal_full, None),
                                   ("real clips' latents + full decoder (the reconstructions)", recon_full, None),
                                   ("real clips' latents + tiny decoder", recon_tiny, None)):
        features = metric.video_features(frames)
        rows.append({"method": label, "decode_seconds_per_clip": seconds, "fvd_proxy": metric.frechet_distance(features, real_features),
                     "fvd_proxy_vs_recon": metric.frechet_distance(features, recon_features), "motion": metric.motion(frames),
                     "fvd_proxy_vs_recon_last_frame_left_out": metric.frechet_distance(metric.video_features(frames[:, :-1]), recon_features_but_last)})
    fidelity = [compare("SF-V 1 step (generated)", full_frames, tiny_frames), compare("VAE encoding of the real held-out clips", recon_full, recon_tiny),
                compare("SF-V 1 step, the full decoder itself decoding each frame from frames <= t (a causal decoder's reference)",
                        full_frames, causal_full)]
    full_row, tiny_row = rows[:2]
    bars = {
        "tiny-decode PSNR vs full decode >= 28 dB (SF-V 1-step latents, mean over held-out clips)": fidelity[0]["psnr_db_mean"] >= 28,
        "FVD proxy (vs real) of SF-V + tiny <= 1.3 x SF-V + full": tiny_row["fvd_proxy"] <= 1.3 * full_row["fvd_proxy"],
        "FVD proxy (vs VAE reconstructions) of SF-V + tiny <= 1.3 x SF-V + full": tiny_row["fvd_proxy_vs_recon"] <= 1.3 * full_row["fvd_proxy_vs_recon"],
    }
    results = {"rows": rows, "fidelity": fidelity, "bars": bars, "parameters": tiny_decoder.parameter_count(decoder), "speedup": full_seconds / tiny_seconds}
    return results, {"real": heldout, "full decoder": full_frames, "tiny decoder": tiny_frames}


def table(results: dict) -> str:
    lines = ["| method | decode s / clip | FVD proxy vs real | FVD proxy vs VAE reconstructions | the same, last frame left out | motion |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        seconds = "-" if r["decode_seconds_per_clip"] is None else f"{r['decode_seconds_per_clip']:.4f}"
        lines.append(f"| {r['method']} | {seconds} | {r['fvd_proxy']:.4f} | {r['fvd_proxy_vs_recon']:.4f} | {r['fvd_proxy_vs_recon_last_frame_left_out']:.4f} | {r['motion']:.4f} |")
    lines += ["", "| tiny decode vs full decode, on | PSNR dB (mean, min over clips) | SSIM (mean) | motion, tiny / full |", "|---|---|---|---|"]
    for f in results["fidelity"]:
        lines.append(f"| {f['latents']} | {f['psnr_db_mean']:.2f} ({f['psnr_db_min']:.2f}) | {f['ssim_mean']:.4f} | {f['motion_ratio']:.2f} |")
    lines.append("")
    lines += [f"- {k}: {'MET' if v else 'not met'}" for k, v in results["bars"].items()]
    lines.append(f"- tiny decoder: {results['parameters']:,} parameters; decode {results['speedup']:.1f}x faster than the toy VAE's temporal decoder")
    lines.append("- wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings_s"].items()))
    return "\n".join(lines) + "\n"


def run(out: str | Path, cfg: ToyDecoderConfig | None = None, checkpoint: Path | None = None, decoder: Path | None = None) -> dict:
    """Data, distillation and evaluation; with `decoder` (an existing tiny decoder file, e.g.
    from train-decoder on the miniature's data), only the evaluation."""
    from ..assets import TOY_CHECKPOINT

    cfg = cfg or ToyDecoderConfig()
    checkpoint = Path(checkpoint or TOY_CHECKPOINT)
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    timings = {}
    if decoder is None:
        data_path = out / "data" / "train"
        train_cfg = trainer_config(cfg, checkpoint, data_path, out / "distil")
        shutil.rmtree(out / "distil", ignore_errors=True)
        t0 = time.perf_counter()
        toy = experiment.ToyConfig()
        shutil.rmtree(out / "data", ignore_errors=True)
        toy_data.write_frame_folders(toy_data.generate_split("train", cfg.train_clips, toy.num_frames, toy.size), data_path)
        timings["data"] = time.perf_counter() - t0
        decoder, timings["distil"] = distil(train_cfg)
    else:
        tiny_decoder.load_tiny_decoder(decoder)  # a wrong or damaged file fails here, before any work
    t0 = time.perf_counter()
    results, samples = evaluate(cfg, checkpoint, Path(decoder))
    timings["evaluation"] = time.perf_counter() - t0
    results.update(config=asdict(cfg), timings_s=timings, files={"decoder": str(decoder), "teacher": str(checkpoint)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table(results))
    experiment.save_samples({k: v for k, v in samples.items() if k != "real"}, samples["real"], out / "samples.png")
    log.info("\n%s", table(results))
    return results


def ship(results: dict) -> Path:
    """Bundle the distilled decoder under the name the CLI's demo documents."""
    from .. import assets

    assets.TOY_TINY_DECODER.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results["files"]["decoder"], assets.TOY_TINY_DECODER)
    return assets.TOY_TINY_DECODER


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--out", default="outputs/toy_decoder")
    parser.add_argument("--quick", action="store_true", help="a smoke run with a few steps")
    parser.add_argument("--ship", action="store_true", help="also bundle the decoder into sfv_core/assets")
    parser.add_argument("--steps", type=int, help="distillation steps (default 600)")
    parser.add_argument("--threads", type=int, help="torch threads (default 2; 1 leaves a core to another job)")
    parser.add_argument("--generated-fraction", type=float, help="share of the training clips replaced by the toy SF-V's samples (default 0.5; 0: real-clip latents only)")
    parser.add_argument("--evaluate", metavar="DECODER", help="only score this tiny decoder file (skip the data and the distillation)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="train-decoder config fields for the distillation, e.g. loss.temporal_weight=3")
    args = parser.parse_args(argv)
    if args.evaluate and (args.set or args.steps or args.generated_fraction is not None):
        parser.error("--set, --steps and --generated-fraction set the distillation, which --evaluate skips: drop them or --evaluate")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = ToyDecoderConfig.quick() if args.quick else ToyDecoderConfig()
    if args.steps:
        cfg.steps = args.steps
    if args.threads:
        cfg.threads = args.threads
    if args.generated_fraction is not None:
        cfg.generated_fraction = args.generated_fraction
    cfg.train_sets = tuple(args.set)
    try:
        results = run(args.out, cfg, decoder=args.evaluate)
    except (InputError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(results))
    if args.ship:
        print(ship(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
