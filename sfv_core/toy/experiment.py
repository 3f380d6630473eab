"""SF-V in miniature: the paper's Table 1 and head ablation on generated data, end to end.

    python -m sfv_core.toy.experiment --out outputs/toy --ship     # the table, from the shipped teacher
    python -m sfv_core.toy.experiment --out outputs/toy --set teacher=train   # the same, teacher trained here first
    python -m sfv_core.toy.experiment --out /tmp/toy --quick       # a smoke run (58 s on 2 quiet cores)
    python -m sfv_core.toy.experiment --out outputs/toy-seeds --seeds 0 1 2   # the recipe rows per seed, mean and range

Stages, all in this process, through the project's own code paths:
  1. data: train / held-out clips from `toy.data`, written as frame folders (the trainer's input);
  2-3. the teacher: by default the miniature's pretrained SVD from sfv_core/assets (what stages
     2 and 3 made with teacher=train and seed 0, byte for byte), and the latent cache of the
     training clips encoded by it, as a real SF-V run starts from svd.safetensors. With
     teacher=train:
  2. VAE: the tiny SVD VAE (KL-f8 encoder + temporal decoder, the real diffusers class) fitted to
     the training frames here (a random VAE would make decoded clips meaningless), then its
     latent space rescaled exactly to std 1;
  3. teacher: the tiny SVD UNet trained from scratch by `sfv_core.train.Trainer` with
     `loss.mode: edm_diffusion` (EDM v-prediction, as SVD was pretrained), latent cache on;
  4. SF-V: the teacher fine-tuned by the same Trainer with `loss.mode: sfv_adversarial`, once per
     recipe row (the paper's reconstruction form, the per-element form, and the control with the
     adversarial weight 0) and once per head ablation (spatial / temporal heads only);
  5. evaluation on the held-out split: one clip per held-out start frame for each row, decoded
     by the VAE, scored with the FVD proxy of `toy.metric` against the real held-out clips and
     against the VAE's reconstructions of them.
Writes results.json, table.md, quality_vs_time.png and samples.png into --out; --ship also
bundles the SF-V model and a start frame into sfv_core/assets (the CLI's default demo), and,
with teacher=train, the teacher.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .. import conditioning, sampling
from ..errors import InputError
from ..models import SVDConfigs, SVDModel, build_random_model, image_encoder_config, unet_config, vae_config
from . import data as toy_data
from . import metric

log = logging.getLogger("sfv_core.toy")

# The SVD architecture (real classes, 4 UNet and 4 VAE levels) at small widths. GroupNorm has
# 32 groups everywhere; a 32-wide layer would have one channel per group, which erases each
# channel's mean over the frame. Where no residual path goes around the norm (the UNet's and
# the VAE decoder's output norm on the first level, the VAE encoder's on the last) that erases
# the frame's colour, so those levels are 64 wide (the 32-wide VAE made every background grey).
TOY_CONFIGS = SVDConfigs(
    unet=unet_config(block_out_channels=(64, 32, 32, 32), layers_per_block=1, cross_attention_dim=32, addition_time_embed_dim=64),
    vae=vae_config(block_out_channels=(64, 32, 32, 64), layers_per_block=2),
    image_encoder=image_encoder_config(hidden_size=32, num_hidden_layers=1, intermediate_size=64, projection_dim=32),
)


@dataclass
class ToyConfig:
    num_frames: int = 8
    size: int = 64
    fps: int = 7
    train_clips: int = 1024
    heldout_clips: int = 100
    vae_steps: int = 500
    vae_batch_clips: int = 1
    vae_lr: float = 1e-3
    vae_coarse_weight: float = 4.0
    pretrain_steps: int = 1000
    pretrain_batch: int = 8
    pretrain_lr: float = 5e-4
    distill_steps: int = 250
    distill_batch: int = 4
    # The miniature's ratio G 1 : D 50 (the paper: 1e-5 : 1e-4, 1 : 10), kept from the runs the
    # README reports and not re-tuned; `--set distill_lr_d=1e-3` runs the paper's ratio.
    distill_lr_g: float = 1e-4
    distill_lr_d: float = 5e-3
    lora_lr_g: float = 1e-3  # the LoRA rows' G learning rate (see RECIPES)
    head_channels: int = 64
    # At 64x64 (an 8x8 latent) the block outputs are 4x4, 2x2, 1x1, 1x1: spatial heads nearly
    # blind. Read before each downsampler instead: 8x8, 4x4, 2x2, 1x1.
    disc_features: str = "before_downsample"
    teacher_steps: int = 25
    guidance: tuple = (1.0, 3.0)
    seed: int = 0
    threads: int = 2
    variants: tuple = ("both", "spatial", "temporal")
    # Recipe rows (all with both heads): keys of RECIPES (also lora8, lora32).
    recipes: tuple = ("paper", "per_element", "control")
    # Where the teacher comes from: "shipped" starts the SF-V stages from the miniature's
    # pretrained SVD in sfv_core/assets (seed 0's teacher of a "train" run), as a real SF-V run
    # starts from svd.safetensors; "train" fits the VAE and pretrains the teacher here first.
    teacher: str = "shipped"
    # Reuse --out's data, latent cache and teacher from an earlier run (only the SF-V stages
    # and the evaluation run again; their timings are then not a whole run's).
    reuse_teacher: bool = False
    # The seed sweep: "first" trains data, VAE and teacher once (the first seed) and varies only
    # the distillation over the seeds (what the README's sweep measured); "each" reruns the
    # whole pipeline per seed.
    sweep_teacher: str = "first"
    # The rows no sweep bar reads: the teacher's full sampling and SF-V at 2 and 4 steps (about
    # 3 minutes of evaluation a seed here). The seed sweep leaves them out.
    extra_rows: bool = True

    @classmethod
    def quick(cls) -> "ToyConfig":
        return cls(train_clips=8, heldout_clips=6, vae_steps=2, pretrain_steps=2, pretrain_batch=2,
                   distill_steps=1, distill_batch=2, teacher_steps=3, teacher="train")


# What makes the teacher (stages 2-3). The shared fields are read by the later stages too, so
# a run from the shipped teacher must use the shipped teacher's; the training fields it does not use.
SHARED_TEACHER_FIELDS = ("num_frames", "size", "fps")
TEACHER_TRAINING_FIELDS = ("vae_steps", "vae_batch_clips", "vae_lr", "vae_coarse_weight", "pretrain_steps", "pretrain_batch", "pretrain_lr")
TEACHER_FIELDS = SHARED_TEACHER_FIELDS + TEACHER_TRAINING_FIELDS
TEACHER_METADATA = "sfv_toy_teacher"  # the shipped teacher's settings, JSON, in its file's metadata


def shipped_teacher_settings() -> dict:
    """The settings (TEACHER_FIELDS, train_clips, seed) the shipped teacher was trained with."""
    from safetensors import safe_open

    from ..assets import TOY_TEACHER

    fix = "restore it from the repository, or --set teacher=train to train one here (about 18 minutes)"
    if not TOY_TEACHER.is_file():
        raise InputError(f"the miniature's teacher {TOY_TEACHER} is missing (a checkout without the assets?): {fix}")
    try:
        with safe_open(str(TOY_TEACHER), "pt") as f:
            return json.loads((f.metadata() or {})[TEACHER_METADATA])
    except Exception as error:  # unreadable, truncated, or another file under its name
        raise InputError(f"{TOY_TEACHER} is not the miniature's teacher ({type(error).__name__}: no readable {TEACHER_METADATA} settings in its header): {fix}") from None


def check_teacher(cfg: ToyConfig) -> None:
    """Settings that contradict the teacher's source, refused before any stage runs."""
    if cfg.teacher not in ("shipped", "train"):
        raise InputError(f"teacher is 'shipped' (start from sfv_core/assets' pretrained toy SVD) or 'train' (train one here), got {cfg.teacher!r}")
    if cfg.teacher == "train":
        return
    if cfg.sweep_teacher == "each":
        raise InputError("sweep_teacher=each trains a teacher per seed: add --set teacher=train")
    settings = shipped_teacher_settings()
    differ = [f"{name}={getattr(cfg, name)} (the teacher's: {settings[name]})" for name in SHARED_TEACHER_FIELDS if getattr(cfg, name) != settings[name]]
    if differ:
        raise InputError(f"the shipped teacher was trained at other settings: {', '.join(differ)}; "
                         "use its settings, or --set teacher=train to train a teacher at these")


# The recipe rows: (row label, trainer config fields, as section.field, set on top of its
# defaults and the miniature's settings). LoRA rows train PEFT adapters on attention and
# feed-forwards (alpha = rank) at 10x the full fine-tune's G learning rate, the usual LoRA
# ratio (diffusers' LoRA scripts: 1e-4 against 1e-5); set lora_lr_g to change it.
RECIPES = {
    "paper": ("SF-V", {}),
    "per_element": ("SF-V (per-element reconstruction)", {"loss.reconstruction_form": "per_element"}),
    "control": ("control: adversarial weight 0", {"loss.adversarial_weight": 0.0}),
    **{f"lora{rank}": (f"SF-V LoRA rank {rank}", {"model.adapter": "lora", "model.lora_rank": rank, "model.lora_alpha": float(rank)})
       for rank in (8, 32)},
}
HEAD_LABELS = {"spatial": "SF-V, spatial heads only", "temporal": "SF-V, temporal heads only"}


def students(cfg: ToyConfig) -> list[tuple[str, str, str]]:
    """(run name, heads, recipe) of every SF-V run; 'sfv_both' is the default recipe (shipped)."""
    runs = [("sfv_both" if recipe == "paper" else f"sfv_{recipe}", "both", recipe) for recipe in cfg.recipes] if "both" in cfg.variants else []
    return runs + [(f"sfv_{heads}", heads, "paper") for heads in cfg.variants if heads != "both"]


# ---- stage 2: the VAE --------------------------------------------------------------------

def train_vae(model: SVDModel, clips: torch.Tensor, cfg: ToyConfig) -> list[float]:
    """Fit the VAE to training frames (L1 + MSE through the temporal decoder, a tiny KL), then
    scale its latent space so that model-space latents have std 1 (EDM's sigma_data)."""
    vae = model.vae
    vae.requires_grad_(True).train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    generator = torch.Generator().manual_seed(cfg.seed + 11)
    losses = []
    for step in range(cfg.vae_steps):
        pick = torch.randint(len(clips), (cfg.vae_batch_clips,), generator=generator)
        x = to_vae_input(clips[pick])
        posterior = vae.encode(x).latent_dist
        # The posterior mean, as the latent cache and inference encode: sampling would slow
        # the fit for no use here.
        recon = vae.decode(posterior.mode(), num_frames=cfg.num_frames).sample
        rec = (recon - x).abs().mean() + (recon - x).square().mean()
        # The same error on 8x8 means of the frames: weights colour and layout, which the
        # full-resolution loss leaves to be learnt last (the fit is only a few hundred steps).
        coarse = (pool8(recon) - pool8(x)).abs().mean()
        loss = rec + cfg.vae_coarse_weight * coarse + 1e-4 * posterior.kl().mean() / recon[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(rec.item())
        if step % 100 == 0:
            log.info("vae step %d: reconstruction %.4f", step, rec.item())
    vae.requires_grad_(False).train(False)
    scale = calibrate_latent_scale(vae, to_vae_input(clips[: 64]))
    log.info("vae latent scale: x%.3f", scale)
    return losses


def pool8(images: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(images, 8)


def to_vae_input(clips: torch.Tensor) -> torch.Tensor:
    """(N, F, H, W, 3) in [0, 1] -> (N*F, 3, H, W) in [-1, 1]."""
    return clips.permute(0, 1, 4, 2, 3).flatten(0, 1) * 2 - 1


@torch.no_grad()
def calibrate_latent_scale(vae, frames: torch.Tensor) -> float:
    """Rescale the latent space so that posterior means have std 1 / scaling_factor, exactly:
    the mean rows of quant_conv times k, its log-variance bias + 2 ln k, the decoder's conv_in
    weights divided by k. Decoded images do not change. Returns k."""
    std = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in frames.split(64)]).std()
    k = float(1.0 / vae.config.scaling_factor / std)
    c = vae.config.latent_channels
    vae.quant_conv.weight[:c] *= k
    vae.quant_conv.bias[:c] *= k
    vae.quant_conv.bias[c:] += 2 * math.log(k)
    vae.decoder.conv_in.weight /= k
    return k


# ---- stages 3-4: the trainer -----------------------------------------------------------

def trainer_config(cfg: ToyConfig, model_path: Path, data_path: Path, cache: Path, out: Path, mode: str, heads: str = "both", recipe: str = "paper"):
    from ..train.config import TrainConfig

    t = TrainConfig()
    t.model.path = str(model_path)
    d = t.data
    d.path, d.latent_cache, d.num_frames, d.fps, d.width, d.height = str(data_path), str(cache), cfg.num_frames, float(cfg.fps), cfg.size, cfg.size
    d.num_workers, d.cache_clips_per_video = 0, 1
    r = t.run
    r.output_dir, r.seed, r.mixed_precision, r.gradient_checkpointing = str(out), cfg.seed, "fp32", False
    r.preview_every, r.resume, r.log_every, r.export_dtype, r.export_single_file = 0, False, 25, "fp32", True
    t.loss.mode = mode
    t.optim.gradient_accumulation = 1
    if mode == "edm_diffusion":
        r.steps, d.batch_size = cfg.pretrain_steps, cfg.pretrain_batch
        r.checkpoint_every = r.steps
        t.optim.lr_generator, t.optim.beta1, t.optim.ema_decay = cfg.pretrain_lr, 0.9, 0.995
    else:
        r.steps, d.batch_size = cfg.distill_steps, cfg.distill_batch
        r.checkpoint_every = r.steps
        t.optim.lr_generator, t.optim.lr_discriminator = cfg.distill_lr_g, cfg.distill_lr_d
        t.discriminator.heads, t.discriminator.head_channels, t.discriminator.cond_channels = heads, cfg.head_channels, cfg.head_channels
        t.discriminator.features = cfg.disc_features
        fields = RECIPES[recipe][1]
        if fields.get("model.adapter") == "lora":
            t.optim.lr_generator = cfg.lora_lr_g
        for dotted, value in fields.items():
            section, name = dotted.split(".")
            setattr(getattr(t, section), name, value)
    return t


def encode_latent_cache(cfg: ToyConfig, model_path: Path, data_dir: Path, cache: Path) -> None:
    """The latent cache the teacher's trainer would have built (the same data settings, model
    and seed), for a run that starts from the shipped teacher: built here, not by the first
    SF-V training, so that each training's time is its own."""
    from ..train.data import scan
    from ..train.encoding import build_latent_cache, finish_latent_cache

    d = trainer_config(cfg, model_path, data_dir, cache, cache.parent, "sfv_adversarial").data
    sources = scan(d.path, d.num_frames, d.fps, d.frame_folder_fps).sources
    build_latent_cache(load(model_path), sources, d, cfg.seed, cache)
    finish_latent_cache(cache, d)


def run_trainer(train_cfg) -> tuple[Path, float]:
    """Train, export; returns (the exported single file, seconds)."""
    from ..train.trainer import SINGLE_FILE, Trainer

    started = time.perf_counter()
    trainer = Trainer(train_cfg)
    trainer.train()
    trainer.export()
    seconds = time.perf_counter() - started
    out = Path(train_cfg.run.output_dir)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # resumable state is not needed here
    return out / "export" / SINGLE_FILE, seconds


# ---- stage 5: sampling and evaluation ----------------------------------------------------

def unconditional(cond: sampling.Conditioning) -> sampling.Conditioning:
    """SVD's unconditional branch: zero image embedding and zero image latent."""
    return sampling.Conditioning(torch.zeros_like(cond.image_embeds), torch.zeros_like(cond.image_latent), cond.added_time_ids, cond.num_frames)


@torch.no_grad()
def sample_guided(unet, cond: sampling.Conditioning, generator: torch.Generator, steps: int, guidance=(1.0, 3.0)) -> torch.Tensor:
    """SVD's sampler: Euler on the Karras schedule (sigma_max 700 -> 0.002, then 0) with
    per-frame classifier-free guidance rising linearly from guidance[0] to guidance[1]."""
    sigmas = sampling.karras_sigmas(steps) + [0.0]
    x = sampling.draw_noise(cond.latent_shape, generator) * math.sqrt(sigmas[0] ** 2 + 1)
    scale = torch.linspace(guidance[0], guidance[1], cond.num_frames).reshape(1, -1, 1, 1, 1)
    both = sampling.Conditioning(*(torch.cat([u, c]) for u, c in zip(
        (unconditional(cond).image_embeds, unconditional(cond).image_latent, cond.added_time_ids),
        (cond.image_embeds, cond.image_latent, cond.added_time_ids))), cond.num_frames)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d_uncond, d_cond = sampling.denoise(unet, torch.cat([x, x]), s, both).chunk(2)
        x0 = d_uncond + scale * (d_cond - d_uncond)
        x = x0 if s_next == 0 else x + (s_next - s) * (x - x0) / s
    return x


@torch.no_grad()
def decode(vae, model_latents: torch.Tensor, chunk_clips: int = 16) -> torch.Tensor:
    """Model-space latents (N, F, 4, h, w) -> frames (N, F, H, W, 3) in [0, 1]."""
    out = []
    for chunk in sampling.to_raw_latent(model_latents).split(chunk_clips):
        n, f = chunk.shape[:2]
        pixels = vae.decode(chunk.flatten(0, 1), num_frames=f).sample
        out.append(((pixels + 1) / 2).clamp(0, 1).unflatten(0, (n, f)).permute(0, 1, 3, 4, 2))
    return torch.cat(out)


def condition_heldout(model: SVDModel, clips: torch.Tensor, cfg: ToyConfig) -> sampling.Conditioning:
    cond, _ = conditioning.condition(model, clips[:, 0], width=cfg.size, height=cfg.size, num_frames=cfg.num_frames,
                                     fps=cfg.fps, augmentation=0.02, augmentation_seed=cfg.seed)
    return cond


def evaluate(name: str, model: SVDModel, make_latents, cond, real: torch.Tensor, real_features: torch.Tensor, unet_passes: int,
             recon_features: torch.Tensor | None = None) -> dict:
    """Generate one clip per held-out start frame, decode, score; time is wall time per clip of
    sampling + decoding (conditioning excluded: it is the same for every row)."""
    started = time.perf_counter()
    latents = make_latents(model.unet, cond)
    sampled = time.perf_counter()
    frames = decode(model.vae, latents)
    done = time.perf_counter()
    clips = len(real)
    row = {
        "method": name,
        "unet_passes": unet_passes,
        "fvd_proxy": float("nan"),
        "motion": metric.motion(frames),
        "motion_data": metric.motion(real),
        "first_frame_error": metric.first_frame_error(frames, real[:, 0]),
        "seconds_per_clip": (done - started) / clips,
        "unet_seconds_per_clip": (sampled - started) / clips,
    }
    features = metric.video_features(frames)
    row["fvd_proxy"] = metric.frechet_distance(features, real_features)
    row["fvd_proxy_vs_recon"] = metric.frechet_distance(features, recon_features) if recon_features is not None else float("nan")
    row["motion_error"] = abs(row["motion"] - row["motion_data"]) / row["motion_data"]
    log.info("%s: %s", name, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    return row, frames


def load(path: Path) -> SVDModel:
    from ..checkpoints import load_model

    return load_model(path, dtype=torch.float32, device="cpu")


def run(out: str | Path, cfg: ToyConfig | None = None) -> dict:
    cfg = cfg or ToyConfig()
    check_teacher(cfg)
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    started = time.perf_counter()

    from ..train.trainer import SINGLE_FILE

    data_dir, cache = out / "data" / "train", out / "latent_cache"
    teacher_path = out / "teacher" / "export" / SINGLE_FILE
    heldout = toy_data.to_float(toy_data.generate_split("heldout", cfg.heldout_clips, cfg.num_frames, cfg.size))
    vae_losses = []
    if not (cfg.reuse_teacher and teacher_path.is_file() and cache.is_dir()):
        # 1. data
        t0 = time.perf_counter()
        train_u8 = toy_data.generate_split("train", cfg.train_clips, cfg.num_frames, cfg.size)
        shutil.rmtree(out / "data", ignore_errors=True)
        toy_data.write_frame_folders(train_u8, data_dir)
        timings["data"] = time.perf_counter() - t0

        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out / "teacher", ignore_errors=True)
        if cfg.teacher == "train":
            # 2. base model: tiny SVD classes, random UNet / CLIP tower, a VAE fitted to the frames
            t0 = time.perf_counter()
            base = build_random_model(TOY_CONFIGS, seed=cfg.seed)
            vae_losses = train_vae(base, toy_data.to_float(train_u8), cfg)
            from ..checkpoints import save_single_file

            base_path = save_single_file(base, out / "base.safetensors")
            timings["vae"] = time.perf_counter() - t0

            # 3. teacher: EDM diffusion pretraining with the project's trainer
            teacher_path, timings["teacher"] = run_trainer(trainer_config(cfg, base_path, data_dir, cache, out / "teacher", "edm_diffusion"))
        else:
            # 2-3. the shipped teacher, copied into the run (so it is self-contained, and the
            # sweep's later seeds copy it from here), and the latent cache its trainer built
            from ..assets import TOY_TEACHER

            t0 = time.perf_counter()
            teacher_path.parent.mkdir(parents=True)
            shutil.copyfile(TOY_TEACHER, teacher_path)
            encode_latent_cache(cfg, teacher_path, data_dir, cache)
            timings["latent_cache"] = time.perf_counter() - t0
    else:
        log.info("reusing %s and %s", teacher_path, cache)
    runs = students(cfg)
    for name, _, _ in runs:
        shutil.rmtree(out / name, ignore_errors=True)

    # 4. SF-V distillation: the recipe rows and the head ablations
    trained = {}
    for name, heads, recipe in runs:
        trained[name], timings[name] = run_trainer(trainer_config(cfg, teacher_path, data_dir, cache, out / name, "sfv_adversarial", heads, recipe))

    # 5. evaluation on the held-out split
    t0 = time.perf_counter()
    teacher = load(teacher_path)
    cond = condition_heldout(teacher, heldout, cfg)
    real_features = metric.video_features(heldout)
    seed = cfg.seed + 1000
    g = lambda: sampling.seeded_generator(seed)
    rows, samples = [], {}
    recon = {}

    def add(name, model, fn, passes):
        row, frames = evaluate(name, model, fn, cond, heldout, real_features, passes, recon.get("features"))
        rows.append(row)
        samples[name] = frames

    # The floor: the VAE's reconstruction of the held-out clips (no generation).
    with torch.no_grad():
        flat = to_vae_input(heldout)
        encoded = torch.cat([teacher.vae.encode(c).latent_dist.mode() for c in flat.split(128)])
        encoded = sampling.to_model_space(encoded).unflatten(0, (len(heldout), cfg.num_frames))
    add("VAE reconstruction (floor)", teacher, lambda unet, c: encoded, 0)
    # Second reference: the VAE's reconstructions, so the VAE's own error drops out and the
    # distance measures only the generated latents (seen through the same decoder).
    recon["features"] = metric.video_features(samples["VAE reconstruction (floor)"])
    rows[0]["fvd_proxy_vs_recon"] = 0.0
    if cfg.extra_rows:
        add(f"teacher, {cfg.teacher_steps} steps, CFG {cfg.guidance[0]}->{cfg.guidance[1]}", teacher,
            lambda unet, c: sample_guided(unet, c, g(), cfg.teacher_steps, cfg.guidance), 2 * cfg.teacher_steps)
    add(f"teacher, 1 step, CFG {cfg.guidance[0]}->{cfg.guidance[1]}", teacher, lambda unet, c: sample_guided(unet, c, g(), 1, cfg.guidance), 2)
    add("teacher, 1 step, no CFG", teacher, lambda unet, c: sampling.sample(unet, c, g(), steps=1), 1)
    for name, heads, recipe in runs:
        student = load(trained[name])
        label = RECIPES[recipe][0] if heads == "both" else HEAD_LABELS[heads]
        for steps in ((1, 2, 4) if name == "sfv_both" and cfg.extra_rows else (1,)):
            add(f"{label}, {steps} step{'s' if steps > 1 else ''}", student, lambda unet, c, k=steps: sampling.sample(unet, c, g(), steps=k), steps)
    timings["evaluation"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started

    results = {"config": asdict(cfg), "teacher_settings": shipped_teacher_settings() if cfg.teacher == "shipped" else None, "rows": rows, "timings_s": timings, "bars": bars(rows, cfg),
               "vae_reconstruction_first_last": [vae_losses[0], vae_losses[-1]] if vae_losses else None,
               "files": {"teacher": str(teacher_path), **{k: str(v) for k, v in trained.items()}}}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table(results))
    plot(rows, out / "quality_vs_time.png")
    save_samples(samples, heldout, out / "samples.png")
    log.info("\n%s", table(results))
    return results


def _row(rows, prefix):
    return next(r for r in rows if r["method"].startswith(prefix))


def bars(rows: list[dict], cfg: ToyConfig) -> dict:
    """The issue's bars, checked on the measured numbers, for both references of the FVD proxy."""
    out = {}
    for key, label in (("fvd_proxy", "vs real"), ("fvd_proxy_vs_recon", "vs VAE reconstructions")):
        teacher_one = min(_row(rows, "teacher, 1 step, CFG")[key], _row(rows, "teacher, 1 step, no CFG")[key])
        if "both" not in cfg.variants or "paper" not in cfg.recipes:
            continue
        sfv = _row(rows, "SF-V, 1 step")[key]
        out[f"[{label}] SF-V 1 step <= 0.5 x teacher 1 step (the better of CFG / no CFG)"] = bool(sfv <= 0.5 * teacher_one)
        if cfg.extra_rows:
            teacher_full = _row(rows, f"teacher, {cfg.teacher_steps} steps")[key]
            out[f"[{label}] SF-V 1 step <= 1.5 x teacher {cfg.teacher_steps} steps"] = bool(sfv <= 1.5 * teacher_full)
        if "control" in cfg.recipes:
            control = _row(rows, RECIPES["control"][0])[key]
            out[f"[{label}] SF-V 1 step beats the control (adversarial weight 0)"] = bool(sfv < control)
            if "per_element" in cfg.recipes:
                out[f"[{label}] SF-V per-element 1 step beats the control"] = bool(_row(rows, RECIPES["per_element"][0])[key] < control)
        for rank in (8, 32):
            if f"lora{rank}" in cfg.recipes:
                out[f"[{label}] SF-V LoRA rank {rank} 1 step <= 1.5 x the full fine-tune"] = bool(_row(rows, RECIPES[f"lora{rank}"][0])[key] <= 1.5 * sfv)
        if {"spatial", "temporal"} <= set(cfg.variants):
            out[f"[{label}] spatial heads only worse than both"] = bool(_row(rows, "SF-V, spatial")[key] > sfv)
            out[f"[{label}] temporal heads only worse than both"] = bool(_row(rows, "SF-V, temporal")[key] > sfv)
    return out


# ---- the seed sweep ------------------------------------------------------------------------

SWEEP_KEYS = ("fvd_proxy_vs_recon", "fvd_proxy", "seconds_per_clip", "unet_seconds_per_clip")


def summarise(rows_per_seed: list[list[dict]]) -> list[dict]:
    """Per method (in the first seed's order): mean, min and max of SWEEP_KEYS over the seeds."""
    summary = []
    for first in rows_per_seed[0]:
        values = {key: [next(r for r in rows if r["method"] == first["method"])[key] for rows in rows_per_seed] for key in SWEEP_KEYS}
        summary.append({"method": first["method"], "unet_passes": first["unet_passes"],
                        **{key: {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "seeds": v} for key, v in values.items()}})
    return summary


def sweep_bars(summary: list[dict], key: str = "fvd_proxy_vs_recon") -> dict:
    """The issues' bars on the seed sweep: every adversarial recipe row beats the control on the
    mean with seed ranges apart, the default's mean is at most half the teacher's 1 step, and
    a LoRA row's mean is at most 1.5x the full fine-tune's."""
    out = {}
    by_prefix = lambda prefix: next((r[key] for r in summary if r["method"].startswith(prefix)), None)
    control = by_prefix(RECIPES["control"][0])
    for recipe in ("paper", "per_element", "lora8", "lora32"):
        row = by_prefix(f"{RECIPES[recipe][0]}, 1 step")
        if row is not None and control is not None:
            out[f"{RECIPES[recipe][0]}, 1 step: mean below the control's, seed ranges apart"] = bool(row["mean"] < control["mean"] and row["max"] < control["min"])
    teacher = [r for r in (by_prefix("teacher, 1 step, CFG"), by_prefix("teacher, 1 step, no CFG")) if r is not None]
    sfv = by_prefix("SF-V, 1 step")
    if teacher and sfv is not None:
        out["SF-V, 1 step: mean <= 0.5 x the teacher's 1 step mean (the better of CFG / no CFG)"] = bool(sfv["mean"] <= 0.5 * min(t["mean"] for t in teacher))
    for recipe in ("lora8", "lora32"):
        row = by_prefix(f"{RECIPES[recipe][0]}, 1 step")
        if row is not None and sfv is not None:
            out[f"{RECIPES[recipe][0]}, 1 step: mean <= 1.5 x the full fine-tune's (SF-V, 1 step)"] = bool(row["mean"] <= 1.5 * sfv["mean"])
    return out


def sweep_table(results: dict) -> str:
    seeds = results["seeds"]
    lines = [f"Seeds {', '.join(map(str, seeds))}: mean (min-max) over the seeds.", "",
             "| method | UNet passes | FVD proxy vs VAE reconstructions | FVD proxy vs real | s / clip (sample + decode) | s / clip (UNet only) |",
             "|---|---|---|---|---|---|"]
    cell = lambda v: f"{v['mean']:.4f} ({v['min']:.4f}-{v['max']:.4f})"
    for r in results["summary"]:
        lines.append(f"| {r['method']} | {r['unet_passes']} | " + " | ".join(cell(r[k]) for k in SWEEP_KEYS) + " |")
    lines.append("")
    lines += [f"- {k}: {'MET' if v else 'not met'}" for k, v in results["bars"].items()]
    lines.append("- wall time per seed, all its runs (s): " + ", ".join(f"seed {s} {t:.0f}" for s, t in results["seconds_per_seed"].items()))
    return "\n".join(lines) + "\n"


TEACHER_PARTS = ("data", "latent_cache", "teacher")  # what reuse_teacher reads from a run folder


def sweep(out: str | Path, cfg: ToyConfig, seeds: list[int]) -> dict:
    """The experiment once per seed (into out/seed-N), then the rows summarised. With
    sweep_teacher "first", the later seeds start from a copy of the first seed's data, VAE and
    teacher (reuse_teacher), so the seeds vary the distillation: heads' initialisation, clip
    order, noise and the evaluation's sampling noise."""
    import dataclasses

    out = Path(out)
    per_seed, seconds = [], {}
    for index, seed in enumerate(seeds):
        started = time.perf_counter()
        folder = out / f"seed-{seed}"
        shared = cfg.sweep_teacher == "first" and index > 0
        if shared:
            for part in TEACHER_PARTS:
                shutil.rmtree(folder / part, ignore_errors=True)
                shutil.copytree(out / f"seed-{seeds[0]}" / part, folder / part)
        per_seed.append(run(folder, dataclasses.replace(cfg, seed=seed, reuse_teacher=cfg.reuse_teacher or shared)))
        seconds[seed] = time.perf_counter() - started
    summary = summarise([r["rows"] for r in per_seed])
    results = {"config": asdict(cfg), "seeds": list(seeds), "summary": summary, "bars": sweep_bars(summary), "seconds_per_seed": seconds,
               "teacher": "the first seed's, shared" if cfg.sweep_teacher == "first" else "one per seed"}
    (out / "sweep.json").write_text(json.dumps(results, indent=1))
    (out / "sweep.md").write_text(sweep_table(results))
    return results


def combine(out: str | Path, folders: list[str | Path]) -> dict:
    """One sweep summary from runs made apart (e.g. a seed's LoRA rows run later with
    reuse_teacher): each folder's results.json, grouped by seed; a row the seed already has
    (the teacher's, recomputed by every run) keeps its first measurement."""
    by_seed: dict[int, list[dict]] = {}
    seconds: dict[int, float] = {}
    for folder in folders:
        results = json.loads((Path(folder) / "results.json").read_text())
        seed = results["config"]["seed"]
        seconds[seed] = seconds.get(seed, 0.0) + results["timings_s"]["total"]
        rows = by_seed.setdefault(seed, [])
        rows += [r for r in results["rows"] if r["method"] not in {have["method"] for have in rows}]
    seeds = sorted(by_seed)
    methods = [{r["method"] for r in by_seed[seed]} for seed in seeds]
    common = set.intersection(*methods)
    summary = summarise([[r for r in by_seed[seed] if r["method"] in common] for seed in seeds])
    results = {"seeds": seeds, "folders": [str(f) for f in folders], "summary": summary, "bars": sweep_bars(summary),
               "rows_not_in_every_seed": sorted(set.union(*methods) - common), "seconds_per_seed": seconds}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(results, indent=1))
    (out / "sweep.md").write_text(sweep_table(results))
    return results


def table(results: dict) -> str:
    lines = ["| method | UNet passes | FVD proxy vs real (lower is better) | FVD proxy vs VAE reconstructions | motion (data) | first-frame error | s / clip (sample + decode) | s / clip (UNet only) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['method']} | {r['unet_passes']} | {r['fvd_proxy']:.4f} | {r.get('fvd_proxy_vs_recon', float('nan')):.4f} | {r['motion']:.4f} ({r['motion_data']:.4f}) | "
                     f"{r['first_frame_error']:.4f} | {r['seconds_per_clip']:.4f} | {r['unet_seconds_per_clip']:.4f} |")
    lines.append("")
    lines += [f"- {k}: {'MET' if v else ('not met' if v is not None else 'not run')}" for k, v in results["bars"].items()]
    lines.append("- wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings_s"].items()))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, key: str = "fvd_proxy_vs_recon") -> Path:
    """Quality (FVD proxy, by default against the VAE's reconstructions) against time per clip,
    on labelled log axes. Rows without generation (the floor) are left out. matplotlib is a
    train/dev extra (requirements-train.txt, requirements-dev.txt), imported only here."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = [(r["seconds_per_clip"], r[key], r["method"]) for r in rows if r["unet_passes"] > 0]
    reference = "the VAE's reconstructions of the held-out clips" if key == "fvd_proxy_vs_recon" else "the real held-out clips"
    figure, axes = plt.subplots(figsize=(9, 5.2), dpi=110)
    # The control is trained like SF-V but is neither SF-V nor the teacher: its own marker.
    kinds = {"SF-V": ("tab:red", "o"), "teacher": ("tab:blue", "s"), "control": ("tab:gray", "X")}
    kind_of = lambda name: next((k for k in kinds if name.startswith(k)), "SF-V")
    for seconds, quality, name in points:
        color, marker = kinds[kind_of(name)]
        axes.scatter(seconds, quality, s=40, color=color, marker=marker, zorder=3)
        axes.annotate(name, (seconds, quality), xytext=(6, 3), textcoords="offset points", fontsize=8)
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axes.set_xscale("log")
    axes.set_yscale("log")
    for axis in (axes.xaxis, axes.yaxis):  # plain numbers, not powers of ten, on major and minor ticks
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    low, high = min(p[0] for p in points), max(p[0] for p in points)
    axes.set_xlim(low / 1.15, high * 1.8)  # room for the labels right of the points
    axes.set_xlabel("seconds per clip, sampling + decoding (log scale)")
    axes.set_ylabel(f"FVD proxy vs {reference.split(' of ')[0].removeprefix('the ')} (log scale, lower is better)")
    axes.set_title(f"SF-V in miniature: quality against time (FVD proxy against {reference})", fontsize=10)
    axes.grid(True, which="both", linewidth=0.4, alpha=0.5)
    for kind in sorted({kind_of(name) for _, _, name in points}, key=list(kinds).index):
        color, marker = kinds[kind]
        axes.scatter([], [], color=color, marker=marker, label=kind if kind != "control" else "control (adversarial weight 0)")
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def save_samples(samples: dict, real: torch.Tensor, path: Path, clips: int = 3) -> Path:
    """A grid: for the first held-out clips, real and each method's clip, frames left to right."""
    from PIL import Image

    rows = [real[:clips]] + [frames[:clips] for frames in samples.values()]
    strips = [torch.cat([torch.cat(list(clip), dim=1) for clip in block], dim=0) for block in rows]
    grid = (torch.cat(strips, dim=0).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(grid).save(path)
    return path


DEMO_CLIP = 0  # the held-out clip whose first frame is the bundled start image


def ship(results: dict, assets: Path) -> list[Path]:
    """Bundle the run's SF-V model (both heads, fp16 single file) and a held-out start frame
    into `assets` under the names the CLI's built-in demo reads; and, from a run that trained
    its teacher, the teacher (fp32, so that runs from it reproduce this run's numbers)."""
    from PIL import Image

    from ..checkpoints import save_single_file
    from ..assets import TOY_CHECKPOINT, TOY_START_IMAGE

    cfg = results["config"]
    model = load(Path(results["files"]["sfv_both"]))
    checkpoint = save_single_file(model, assets / TOY_CHECKPOINT.name, dtype=torch.float16)
    start = toy_data.generate_clip("heldout", DEMO_CLIP, cfg["num_frames"], cfg["size"])[0]
    image = assets / TOY_START_IMAGE.name
    Image.fromarray(start).save(image)
    shipped = [Path(checkpoint), image]
    if cfg.get("teacher", "train") == "train":
        shipped.append(ship_teacher(results, assets))
    return shipped


def ship_teacher(results: dict, assets: Path) -> Path:
    """The run's teacher as the miniature's shipped teacher: fp32 (runs from it reproduce this
    run's numbers), with the settings that made it in the metadata."""
    from ..checkpoints import save_single_file
    from ..assets import TOY_TEACHER

    settings = {name: results["config"][name] for name in (*TEACHER_FIELDS, "train_clips", "seed")}
    teacher = load(Path(results["files"]["teacher"]))
    return save_single_file(teacher, assets / TOY_TEACHER.name, metadata={TEACHER_METADATA: json.dumps(settings)})


def set_field(cfg: ToyConfig, pair: str, parser: argparse.ArgumentParser) -> None:
    """One --set FIELD=VALUE, typed like the field's default (tuples: comma-separated)."""
    key, sep, value = pair.partition("=")
    known = [f.name for f in fields(cfg)]
    if not sep or key not in known:
        parser.error(f"--set {pair}: give FIELD=VALUE with a ToyConfig field ({', '.join(known)})")
    current = getattr(cfg, key)
    try:
        if isinstance(current, bool):
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(value)
            value = value.lower() in ("1", "true", "yes")
        elif isinstance(current, tuple):
            value = tuple(type(current[0])(v) for v in value.split(","))
        else:
            value = type(current)(value)
    except ValueError:
        parser.error(f"--set {pair}: {key} takes a value of type {type(current).__name__}, like {current!r}")
    setattr(cfg, key, value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--out", default="outputs/toy")
    parser.add_argument("--quick", action="store_true", help="a smoke run with a few steps of everything")
    parser.add_argument("--ship", action="store_true", help="also bundle the SF-V model and a start image into sfv_core/assets (the CLI's default demo)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override ToyConfig fields, e.g. pretrain_steps=800")
    parser.add_argument("--combine", nargs="+", metavar="RUN_FOLDER",
                        help="summarise finished runs (their results.json) into --out/sweep.md as one seed sweep, rows grouped by seed")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="the seed sweep: the run once per seed, into --out/seed-N, then mean and min-max per row (sweep.md, sweep.json). "
                             "Data, VAE and teacher are the first seed's unless --set sweep_teacher=each; head ablations are left out unless --set variants=... names them")
    args = parser.parse_args(argv)
    if args.seeds and args.ship:
        parser.error("--ship bundles one run's model: run it without --seeds")
    if args.quick and args.ship:  # it would replace the demo model and the shipped teacher with a few steps' worth
        parser.error("--ship bundles a real run's models into sfv_core/assets: run it without --quick")
    if args.combine:
        print(sweep_table(combine(args.out, args.combine)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = ToyConfig.quick() if args.quick else ToyConfig()
    for pair in args.set:
        set_field(cfg, pair, parser)
    unused = [pair for pair in args.set if pair.partition("=")[0] in TEACHER_TRAINING_FIELDS]
    if cfg.teacher == "shipped" and unused:
        parser.error(f"--set {' '.join(unused)}: trains the teacher, which teacher=shipped does not; add teacher=train")
    try:
        check_teacher(cfg)
    except InputError as error:
        parser.error(str(error))
    if cfg.sweep_teacher not in ("first", "each"):
        parser.error(f"sweep_teacher is 'first' (one teacher, the seeds vary the distillation) or 'each' (a whole run per seed), got {cfg.sweep_teacher!r}")
    unknown = [r for r in cfg.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"recipes: {', '.join(unknown)} unknown; known: {', '.join(RECIPES)}")
    if args.seeds:
        if not any(pair.startswith("variants=") for pair in args.set):
            cfg.variants = ("both",)  # keeps 3 seeds inside 90 minutes
        if not any(pair.startswith("extra_rows=") for pair in args.set):
            cfg.extra_rows = False
        print(sweep_table(sweep(args.out, cfg, args.seeds)))
        return 0
    results = run(args.out, cfg)
    print(table(results))
    if args.ship:
        from .. import assets

        for path in ship(results, assets.FOLDER):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
