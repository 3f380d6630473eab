"""The training loop: SF-V's adversarial fine-tuning (or EDM diffusion training) of an SVD UNet.

One optimiser step = `gradient_accumulation` micro-batches, each:
  1. generator phase: a real clip noised to a level from {700, 70.54, 2.27} -> x0 = D(x; sigma)
     (`sampling.denoise`, the same function inference runs); x0 re-noised to a lognormal
     level -> frozen encoder -> heads (frozen for this phase) -> hinge loss, plus 0.1 x
     pseudo-Huber(x0, real); backward into G only.
  2. discriminator phase: the real clip and the (detached) noised x0 -> encoder -> heads ->
     hinge loss (+ lazy R1 on the real input); backward into the heads only.
Then both optimisers step and the EMA of G is updated.

Distribution: `accelerate` wraps G (DDP or FSDP, whatever `accelerate launch` configured).
The frozen encoder is replicated; the small heads are replicated too and their gradients
are averaged by hand (one all-reduce per step), which avoids wrapping a module that is
called several times per backward and frozen in between.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch

from ..errors import InputError
from ..models import TINY, SVDModel, build_random_model
from ..runtime import move
from ..sampling import Conditioning, denoise
from . import checkpointing
from .config import TINY_RANDOM, TrainConfig, cpu_advice
from .data import BatchStream, ClipOrder, Source, VideoClipDataset, scan
from .diagnostics import GradientProbe, accuracy_parts, finish_accuracies
from .discriminator import DiscriminatorHeads, FrozenUNetEncoder
from .ema import EMA
from .encoding import LatentCacheDataset, batch_inputs, build_latent_cache, cache_is_complete, finish_latent_cache
from .logs import LossLog
from .memory import enable_activation_checkpointing
from .losses import (
    approximate_r1_penalty,
    discriminator_sigmas,
    edm_loss,
    edm_sigmas,
    generator_sigmas,
    hinge_discriminator,
    hinge_generator,
    reconstruction_loss,
    r1_penalty,
    randn,
)

log = logging.getLogger("sfv_core.train")

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
UNET_FILE = "sfv_unet.safetensors"
SINGLE_FILE = "sfv_svd_single_file.safetensors"


def load_base_model(path: str) -> SVDModel:
    """SVD weights in float32 on the CPU; the trainer places each part where it is needed."""
    if path == TINY_RANDOM:
        return build_random_model(TINY)
    from ..checkpoints import load_model

    return load_model(path, dtype=torch.float32, device="cpu")


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # DDP: gradients live in the all-reduce buckets instead of a second copy (6 GB at full size).
    ddp = DistributedDataParallelKwargs(gradient_as_bucket_view=True)
    return Accelerator(mixed_precision={"fp32": "no"}.get(cfg.run.mixed_precision, cfg.run.mixed_precision), kwargs_handlers=[ddp])


def per_clip(values: torch.Tensor) -> torch.Tensor:
    """(clips,) -> (clips, 1, 1, 1, 1), to scale latents (clips, frames, 4, h, w)."""
    return values.reshape(-1, 1, 1, 1, 1)


class Progress:
    """Where the run is: step, data position and the trainer's noise generator (checkpointed).

    Each process draws its own noise; accelerate saves registered objects from the main
    process only, so the state holds every process's generator state (gathered) and each
    process takes back its own.
    """

    def __init__(self, seed: int, rank: int):
        self.step = 0
        self.rank = rank
        self.noise = torch.Generator().manual_seed(seed * 1009 + rank + 1)  # distinct per process
        self.stream: BatchStream | None = None
        self.data_state = {"epoch": 0, "position": 0}

    def attach(self, stream: BatchStream) -> None:
        self.stream = stream
        stream.load_state_dict(self.data_state)

    def state_dict(self) -> dict:
        from accelerate.utils import gather_object

        data = self.stream.state_dict() if self.stream is not None else self.data_state
        return {"step": self.step, "data": dict(data), "noise": gather_object([self.noise.get_state()])}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        if self.rank < len(state["noise"]):  # else more processes than when saved: keep the fresh seed
            self.noise.set_state(state["noise"][self.rank])
        self.data_state = dict(state["data"])
        if self.stream is not None:
            self.stream.load_state_dict(self.data_state)


class Trainer:
    def __init__(self, cfg: TrainConfig, accelerator=None):
        self.cfg = cfg.validate()
        self.accelerator = accelerator or make_accelerator(cfg)
        self.device = self.accelerator.device
        if self.device.type == "cpu" and cfg.run.mixed_precision == "fp16":
            raise InputError("run.mixed_precision fp16 needs a GPU: use 'fp32' or 'bf16' on the CPU")
        if self.device.type == "cpu" and (advice := cpu_advice(cfg)):
            log.warning(advice)
        self.run_dir = Path(cfg.run.output_dir)
        self.adversarial = cfg.loss.mode == "sfv_adversarial"
        # Same seed on every process: the replicated heads must start identical.
        torch.manual_seed(cfg.run.seed)
        self.model = load_base_model(cfg.model.path)
        self._build_networks()
        self._build_optimizers()
        self.ema = EMA(self.generator.parameters(), cfg.optim.ema_decay)
        self.progress = Progress(cfg.run.seed, self.accelerator.process_index)
        for state in ([self.heads] if self.adversarial else []) + [self.ema, self.progress]:
            self.accelerator.register_for_checkpointing(state)
        self.stream: BatchStream | None = None
        self.loss_log: LossLog | None = None
        self.last_cond: Conditioning | None = None
        self.last_r1 = float("nan")

    # ---- construction -------------------------------------------------------------------

    def _build_networks(self) -> None:
        cfg, model = self.cfg, self.model
        frozen_dtype = PRECISION_DTYPES[cfg.run.mixed_precision]
        unet = model.unet
        self.encoder = self.heads = None
        if self.adversarial:
            # A copy of the ORIGINAL UNet's encoder half, taken before G changes. Kept in fp32 for
            # approximate R1, whose passes run in fp32 (autocast still runs the others in bf16).
            fp32_r1 = cfg.loss.r1_weight > 0 and cfg.loss.r1_mode == "approximate"
            self.encoder = FrozenUNetEncoder(unet).to(self.device, torch.float32 if fp32_r1 else frozen_dtype)
            self.heads = DiscriminatorHeads(
                self.encoder.channels,
                image_embed_dim=unet.config.cross_attention_dim,
                width=cfg.discriminator.head_channels,
                cond_width=cfg.discriminator.cond_channels,
                kind=cfg.discriminator.heads,
            ).to(self.device)
        unet.requires_grad_(True).train()
        if cfg.run.gradient_checkpointing:
            for network in (unet, self.encoder):
                if network is not None:
                    enable_activation_checkpointing(network)
        on_the_fly = not cfg.data.latent_cache
        self.place_encoders(vae=on_the_fly or cfg.run.preview_every > 0, image_encoder=on_the_fly)

    def place_encoders(self, vae: bool, image_encoder: bool) -> None:
        """VAE and CLIP on the device only while used there (encoding, previews); else on the CPU."""
        frozen_dtype = PRECISION_DTYPES[self.cfg.run.mixed_precision]
        vae_dtype = torch.float32 if frozen_dtype == torch.float16 else frozen_dtype  # SVD's VAE overflows in fp16
        cpu = torch.device("cpu")
        move(self.model.vae, self.device if vae else cpu, vae_dtype if vae else torch.float32)
        move(self.model.image_encoder, self.device if image_encoder else cpu, frozen_dtype if image_encoder else torch.float32)

    def _build_optimizers(self) -> None:
        o = self.cfg.optim
        betas = (o.beta1, o.beta2)
        opt_g = torch.optim.AdamW(self.model.unet.parameters(), lr=o.lr_generator, betas=betas, weight_decay=o.weight_decay)
        self.generator, self.opt_g = self.accelerator.prepare(self.model.unet, opt_g)
        self.opt_d = None
        if self.adversarial:
            opt_d = torch.optim.AdamW(self.heads.parameters(), lr=o.lr_discriminator, betas=betas, weight_decay=o.weight_decay)
            self.opt_d = self.accelerator.prepare(opt_d)

    # ---- data ---------------------------------------------------------------------------

    def _sources(self) -> list[Source]:
        """Probe the data folder once per run (main process) and keep the list in the run folder."""
        from ..video_io import atomic_path

        listing = self.run_dir / "sources.json"
        d = self.cfg.data
        settings = {"path": str(Path(d.path).resolve()), "num_frames": d.num_frames, "fps": d.fps, "frame_folder_fps": d.frame_folder_fps}
        if self.accelerator.is_main_process and (not listing.is_file() or json.loads(listing.read_text()).get("settings") != settings):
            report = scan(d.path, d.num_frames, d.fps, d.frame_folder_fps)
            log.info("data: %s", report.summary())
            listed = {"settings": settings, "summary": report.summary(), "unreadable": report.unreadable, "too_short": report.too_short, "sources": [s.__dict__ for s in report.sources]}
            with atomic_path(listing) as temporary:
                temporary.write_text(json.dumps(listed, indent=1))
        self.accelerator.wait_for_everyone()
        saved = json.loads(listing.read_text())
        return [Source(**{**s, "frames": tuple(s["frames"])}) for s in saved["sources"]]

    def setup_data(self) -> None:
        d, acc = self.cfg.data, self.accelerator
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if d.latent_cache:
            if not cache_is_complete(d.latent_cache):
                self.place_encoders(vae=True, image_encoder=True)
                build_latent_cache(self.model, self._sources(), d, self.cfg.run.seed, d.latent_cache, acc.process_index, acc.num_processes)
                acc.wait_for_everyone()
                if acc.is_main_process:
                    finish_latent_cache(d.latent_cache, d)
                acc.wait_for_everyone()
                self.place_encoders(vae=self.cfg.run.preview_every > 0, image_encoder=False)
            dataset = LatentCacheDataset(d.latent_cache, d)
        else:
            dataset = VideoClipDataset(self._sources(), d.num_frames, d.fps, d.width, d.height, self.cfg.run.seed)
        order = ClipOrder(len(dataset), d.batch_size, self.cfg.run.seed, acc.process_index, acc.num_processes)
        self.stream = BatchStream(dataset, order, d.num_workers)
        self.progress.attach(self.stream)

    def next_inputs(self) -> tuple[torch.Tensor, Conditioning, int]:
        """The next micro-batch as (model-space latents, conditioning, sources skipped for it)."""
        batch = self.stream.next()
        latents, cond = batch_inputs(batch, self.model, self.cfg.data, self.progress.noise, self.device)
        return latents, cond, int(batch["fallbacks"].sum())

    # ---- losses -------------------------------------------------------------------------

    def discriminate(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, features_grad: bool = True) -> list[torch.Tensor]:
        with torch.set_grad_enabled(features_grad and torch.is_grad_enabled()):
            features = self.encoder(x, sigma, cond)
        return self.heads(features, sigma, cond)

    def generator_loss(self, latents: torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, dict, dict]:
        """G's loss on one micro-batch; also returns the noised x0 the discriminator phase reuses."""
        loss_cfg, noise, clips = self.cfg.loss, self.progress.noise, latents.shape[0]
        sigma = generator_sigmas(clips, loss_cfg.generator_levels, noise, self.device)
        noisy = latents + per_clip(sigma) * randn(latents.shape, noise, self.device)
        sigma_fake = discriminator_sigmas(clips, loss_cfg.disc_p_mean, loss_cfg.disc_p_std, loss_cfg.disc_levels, noise, self.device)
        fake_noise = randn(latents.shape, noise, self.device)
        with self.accelerator.autocast():
            x0 = denoise(self.generator, noisy, sigma, cond)
            # Each term reads its own hooked view of x0: the backward reports their gradient norms.
            self.x0_probe = GradientProbe()
            fake_noisy = self.x0_probe.watch("adversarial", x0) + per_clip(sigma_fake) * fake_noise
            self.heads.requires_grad_(False)  # G's loss must not train the heads
            try:
                adversarial = hinge_generator(self.discriminate(fake_noisy, sigma_fake, cond), loss_cfg.head_reduction)
            finally:
                self.heads.requires_grad_(True)
            reconstruction = reconstruction_loss(self.x0_probe.watch("reconstruction", x0), latents, loss_cfg.reconstruction_form, loss_cfg.huber_c)
        loss = loss_cfg.adversarial_weight * adversarial + loss_cfg.reconstruction_weight * reconstruction
        parts = {"loss_g": loss.item(), "g_adversarial": adversarial.item(), "g_reconstruction": reconstruction.item()}
        return loss, parts, {"fake_noisy": fake_noisy.detach(), "sigma_fake": sigma_fake, "sigma_generator": sigma}

    def discriminator_loss(self, latents: torch.Tensor, cond: Conditioning, fake_noisy: torch.Tensor, sigma_fake: torch.Tensor, with_r1: bool,
                           sigma_generator: torch.Tensor | None = None):
        """Hinge loss of the heads on real vs generated (+ lazy R1). Returns (loss, parts, real input).
        With the generator's input levels, parts also count per-clip accuracy per level."""
        loss_cfg, noise, clips = self.cfg.loss, self.progress.noise, latents.shape[0]
        sigma_real = discriminator_sigmas(clips, loss_cfg.disc_p_mean, loss_cfg.disc_p_std, loss_cfg.disc_levels, noise, self.device)
        exact_r1 = with_r1 and loss_cfg.r1_mode == "exact"
        real_noisy = (latents + per_clip(sigma_real) * randn(latents.shape, noise, self.device)).requires_grad_(exact_r1)
        with self.accelerator.autocast():
            # A finite-difference R1 compares two real passes: both in fp32 (see `r1`).
            with self.full_precision() if with_r1 and not exact_r1 else nullcontext():
                real_logits = self.discriminate(real_noisy, sigma_real, cond, features_grad=exact_r1)
            fake_logits = self.discriminate(fake_noisy, sigma_fake, cond, features_grad=False)
            loss = hinge_discriminator(real_logits, fake_logits, loss_cfg.head_reduction)
            parts = {"loss_d": loss.item(), "d_real": torch.stack([l.float().mean() for l in real_logits]).mean().item(), "d_fake": torch.stack([l.float().mean() for l in fake_logits]).mean().item()}
            if sigma_generator is not None:
                parts.update(accuracy_parts(real_logits, fake_logits, sigma_generator, loss_cfg.generator_levels))
            if with_r1:
                r1 = self.r1(real_logits, real_noisy, sigma_real, cond)
                # Lazy regularisation: applied every r1_interval steps, so scaled by it.
                loss = loss + 0.5 * loss_cfg.r1_weight * loss_cfg.r1_interval * r1
                parts["r1"] = r1.item()
        return loss, parts, real_noisy

    def r1(self, real_logits: list[torch.Tensor], real_noisy: torch.Tensor, sigma_real: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """E||grad_x D(x_real)||^2, exactly (double backward) or by a finite difference (two forwards)."""
        loss_cfg = self.cfg.loss
        if loss_cfg.r1_mode == "exact":
            return r1_penalty(real_logits, real_noisy)
        direction = randn(real_noisy.shape, self.progress.noise, self.device)
        return approximate_r1_penalty(real_logits, self.perturbed_logits(real_noisy, sigma_real, cond, direction), loss_cfg.r1_delta, real_noisy.shape[0])

    def perturbed_logits(self, real_noisy: torch.Tensor, sigma_real: torch.Tensor, cond: Conditioning, direction: torch.Tensor) -> list[torch.Tensor]:
        """D(x + delta*n) in fp32, like the real pass it is compared with: dividing the difference by
        delta^2 = 1e-4 amplifies bf16 rounding of the logits (it biased R1 about 6x high)."""
        with self.full_precision():
            return self.discriminate(real_noisy.detach() + self.cfg.loss.r1_delta * direction, sigma_real, cond, features_grad=False)

    def full_precision(self):
        """Autocast off: fp32 compute (the frozen encoder is kept in fp32 when approximate R1 runs)."""
        return torch.autocast(device_type=self.device.type, enabled=False)

    def diffusion_loss(self, latents: torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, dict]:
        """EDM's denoising loss at lognormal levels (SVD's pretraining objective)."""
        loss_cfg, noise = self.cfg.loss, self.progress.noise
        sigma = edm_sigmas(latents.shape[0], loss_cfg.edm_p_mean, loss_cfg.edm_p_std, noise, self.device)
        noisy = latents + per_clip(sigma) * randn(latents.shape, noise, self.device)
        with self.accelerator.autocast():
            loss = edm_loss(denoise(self.generator, noisy, sigma, cond), latents, sigma)
        return loss, {"loss_edm": loss.item()}

    # ---- one step -----------------------------------------------------------------------

    def r1_due(self) -> bool:
        loss_cfg = self.cfg.loss
        return self.adversarial and loss_cfg.r1_weight > 0 and self.progress.step % loss_cfg.r1_interval == 0

    def accumulate(self, latents: torch.Tensor, cond: Conditioning, sync: bool) -> dict:
        """Backward of one micro-batch into the gradients (averaged over the accumulation)."""
        scale = 1.0 / self.cfg.optim.gradient_accumulation
        with nullcontext() if sync else self.accelerator.no_sync(self.generator):
            if not self.adversarial:
                loss, parts = self.diffusion_loss(latents, cond)
                self.accelerator.backward(loss * scale)
                return parts
            loss_g, parts, fake = self.generator_loss(latents, cond)
            self.accelerator.backward(loss_g * scale)
            del loss_g
            parts["grad_x0_adversarial_over_reconstruction"] = self.x0_probe.ratio("adversarial", "reconstruction")
        with_r1 = self.r1_due()
        # Exact R1 differentiates a gradient: fused attention kernels have no double backward.
        with self._math_attention() if with_r1 and self.cfg.loss.r1_mode == "exact" else nullcontext():
            loss_d, d_parts, _ = self.discriminator_loss(latents, cond, fake["fake_noisy"], fake["sigma_fake"], with_r1, fake["sigma_generator"])
            self.accelerator.backward(loss_d * scale)
        return {**parts, **d_parts}

    @staticmethod
    def _math_attention():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])

    def optimizer_step(self) -> None:
        acc, clip = self.accelerator, self.cfg.optim.grad_clip
        if clip > 0:
            acc.clip_grad_norm_(self.generator.parameters(), clip)  # also unscales fp16 gradients
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        if self.adversarial:
            if acc.num_processes > 1:
                for p in self.heads.parameters():
                    if p.grad is not None:
                        p.grad = acc.reduce(p.grad, reduction="mean")
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.heads.parameters(), clip)
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
        self.ema.update()
        self.progress.step += 1

    def train_step(self) -> dict:
        """One optimiser step; returns the micro-batch-averaged losses."""
        accumulation = self.cfg.optim.gradient_accumulation
        totals: dict = defaultdict(float)
        for micro in range(accumulation):
            latents, cond, skipped = self.next_inputs()
            totals["skipped_sources"] += skipped
            for key, value in self.accumulate(latents, cond, sync=micro == accumulation - 1).items():
                totals[key] += value / accumulation
        self.last_cond = cond
        if "r1" in totals:
            self.last_r1 = totals.pop("r1")  # R1 runs on some steps only: log the latest value
        if self.adversarial:
            totals["r1_last"] = self.last_r1
        self.optimizer_step()
        return finish_accuracies(dict(totals))

    # ---- the run ------------------------------------------------------------------------

    def mean_over_processes(self, values: dict) -> dict:
        """Logged losses averaged over processes (every process must call this)."""
        if self.accelerator.num_processes == 1:
            return values
        keys = sorted(values)
        means = self.accelerator.reduce(torch.tensor([float(values[k]) for k in keys], device=self.device), reduction="mean")
        return dict(zip(keys, means.tolist()))

    def save_checkpoint(self) -> Path | None:
        acc, step = self.accelerator, self.progress.step
        if acc.is_main_process:
            checkpointing.clear_temp_folders(self.run_dir)
        acc.wait_for_everyone()
        acc.save_state(str(checkpointing.temp_folder(self.run_dir, step)), safe_serialization=True)
        acc.wait_for_everyone()
        final = None
        if acc.is_main_process:
            final = checkpointing.publish(self.run_dir, step, self.cfg.run.keep_checkpoints)
            log.info("checkpoint: %s", final)
        acc.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Load `latest` if there is one: weights, optimisers, EMA, RNGs, data position, step."""
        folder = checkpointing.latest_checkpoint(self.run_dir)
        if folder is None:
            return False
        self.accelerator.load_state(str(folder))
        log.info("resumed from %s at step %d", folder, self.progress.step)
        return True

    @torch.no_grad()
    def preview(self) -> Path | None:
        """One-step sample of the EMA generator on the last clip's conditioning, decoded to WebP."""
        from ..decoding import decode_latents
        from ..sampling import sample, seeded_generator, to_raw_latent
        from ..video_io import save_clip

        c = self.last_cond
        cond = Conditioning(c.image_embeds[:1], c.image_latent[:1], c.added_time_ids[:1], c.num_frames)
        with self.ema.swapped_in(), self.accelerator.autocast():
            latents = sample(self.generator, cond, seeded_generator(self.cfg.run.seed), steps=1)
        if not self.accelerator.is_main_process:
            return None
        frames = decode_latents(self.model.vae, to_raw_latent(latents))
        return save_clip(frames[0], self.run_dir / "previews" / f"step-{self.progress.step:08d}.webp", self.cfg.data.fps)

    def train(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        self.setup_data()
        if cfg.run.resume:
            self.resume()
        if acc.is_main_process:
            self.loss_log = LossLog(self.run_dir, self.progress.step)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        while self.progress.step < cfg.run.steps:
            started = time.perf_counter()
            values = self.train_step()
            step = self.progress.step
            if step % cfg.run.log_every == 0 or step == cfg.run.steps:
                values = self.mean_over_processes({**values, "seconds_per_step": time.perf_counter() - started})
                if self.loss_log is not None:
                    self.loss_log.write(step, values)
            if cfg.run.preview_every and step % cfg.run.preview_every == 0:
                self.preview()
            if step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps:
                self.save_checkpoint()
        if self.loss_log is not None:
            self.loss_log.close()

    def export(self, folder: str | Path | None = None) -> list[Path]:
        """The EMA generator as an SF-V UNet file (and optionally inside a full SVD single file)."""
        from ..checkpoints import save_single_file, save_unet_file

        acc = self.accelerator
        folder = Path(folder) if folder else self.run_dir / "export"
        with self.ema.swapped_in():
            # Gathers shards under FSDP (every process calls it); copied before the live weights return.
            state = {k: v.detach().to("cpu", copy=True) for k, v in acc.get_state_dict(self.generator).items()}
        paths: list[Path] = []
        if acc.is_main_process:
            live = acc.unwrap_model(self.generator)
            unet = type(live).from_config(live.config)
            unet.load_state_dict({k: v.float().cpu() for k, v in state.items()}, strict=True)
            unet.train(False).requires_grad_(False)
            dtype = PRECISION_DTYPES[self.cfg.run.export_dtype]
            paths.append(Path(save_unet_file(unet, folder / UNET_FILE, dtype=dtype)))
            if self.cfg.run.export_single_file:
                # The base model's VAE and image encoder, with the trained UNet (SF-V changes only the UNet).
                full = SVDModel(unet=unet, vae=self.model.vae, image_encoder=self.model.image_encoder, native_encoder=self.model.native_encoder)
                paths.append(Path(save_single_file(full, folder / SINGLE_FILE, dtype=dtype)))
            log.info("exported %s", ", ".join(map(str, paths)))
        acc.wait_for_everyone()
        return paths
