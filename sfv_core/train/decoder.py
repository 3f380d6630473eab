"""Distil a tiny decoder (`sfv_core.tiny_decoder`) from a checkpoint's own temporal VAE decoder.

The user's videos are encoded by the checkpoint's VAE (on the fly, or once into the latent
cache, exactly as for SF-V training); each step the teacher (the temporal decoder) decodes a
batch of those latents under no_grad and the student learns to give the same pixels: L1 on the
pixels, on their spatial gradients (edges) and on their frame-to-frame differences (flicker).
With `generated.sfv_unet` set, a share of each batch is replaced by SF-V's own 1-step samples
from the same clips' conditioning: the latents the decoder will decode in use, which lie off
the VAE encoder's outputs that real clips give (in the miniature, a decoder distilled on real
clips only lost 5 dB on generated latents).
The config, data, accelerate launch, checkpoints and logs are the SF-V trainer's (`loop`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..models import VAE_SCALING_FACTOR
from ..sampling import Conditioning, sample
from ..tiny_decoder import TinyDecoder, TinyDecoderConfig, check_fits, save_tiny_decoder, soft_clamp
from .config import DataConfig, ModelConfig, RunConfig, common_checks, doc, raise_failed
from .ema import EMA
from .loop import PRECISION_DTYPES, RunTrainer, base_unet_config
from .losses import decoder_distillation_losses, hinge_discriminator, hinge_generator

log = logging.getLogger("sfv_core.train")

DECODER_FILE = "sfv_tiny_decoder.safetensors"
LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(lr: float, schedule: str, step: int, steps: int) -> float:
    """The learning rate of optimiser step `step` (0-based) of `steps`. A pure function of the
    step, which the checkpoint holds, so a resumed run gets the same rates with no scheduler state."""
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))


@dataclass
class DecoderLossConfig:
    pixel_weight: float = doc("Weight of the L1 between student and teacher pixels (in [-1, 1]).", 1.0)
    edge_weight: float = doc("Weight of the L1 between their horizontal and vertical pixel differences (keeps edges sharp).", 1.0)
    temporal_weight: float = doc("Weight of the L1 between their frame-to-frame differences (temporal consistency, no flicker; "
                                 "2 drew more of the teacher's motion than 1 in the miniature, over four seeds).", 2.0)
    adversarial_weight: float = doc("Weight of the student's hinge loss against a small 3D patch discriminator that tells the teacher's clips from the student's, given the latent "
                                    "(0: no discriminator). L1 pulls what the student cannot predict exactly towards no change; the discriminator asks for the teacher's amount of it.", 0.0)
    adversarial_start: int = doc("Step from which the discriminator trains and its loss counts (the L1 terms fit the clips first).", 0)


@dataclass
class DecoderOptimConfig:
    lr: float = doc("AdamW learning rate of the tiny decoder.", 5e-4)
    lr_schedule: str = doc("constant: optim.lr throughout; cosine: from optim.lr at the first step down to 0 at run.steps, so the exported weights are not one noisy step's.", "constant")
    beta1: float = doc("Adam beta1.", 0.9)
    beta2: float = doc("Adam beta2.", 0.999)
    weight_decay: float = doc("AdamW weight decay.", 0.0)
    grad_clip: float = doc("Clip the gradient norm to this (0 disables).", 1.0)
    gradient_accumulation: int = doc("Micro-batches per optimiser step.", 1)
    ema_decay: float = doc("Decay of the EMA of the student's weights, updated every optimiser step; the EMA is what gets exported (0: the last step's weights).", 0.0)
    lr_discriminator: float = doc("AdamW learning rate of the discriminator (with loss.adversarial_weight > 0); betas 0.5, 0.9 as pix2pix-style GANs.", 2e-4)
    discriminator_width: int = doc("Channels of the discriminator's first conv (doubled twice).", 32)


@dataclass
class GeneratedLatentsConfig:
    sfv_unet: str = doc("An SF-V UNet (train's export/sfv_unet.safetensors, or its merged single file) whose 1-step samples the student learns to decode as well: "
                        "the latents it meets in use. Empty: only the latents of the data's clips.", "")
    fraction: float = doc("Share of the clips, drawn clip by clip each step, replaced by SF-V's sample from that clip's own conditioning (start frame, fps, motion, augmentation).", 0.5)


def decoder_data_defaults() -> DataConfig:
    # Shorter, smaller clips than SF-V's: the student is per-frame plus one-frame memory, and
    # the teacher's decode of every batch is most of a step's cost.
    return dataclasses.replace(DataConfig(), num_frames=8, width=512, height=320, batch_size=2)


def decoder_run_defaults() -> RunConfig:
    return dataclasses.replace(RunConfig(), output_dir="outputs/sfv-decoder", steps=20000, checkpoint_every=1000, preview_every=0,
                               gradient_checkpointing=False, export_dtype="fp16")


@dataclass
class DecoderTrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=decoder_data_defaults)
    decoder: TinyDecoderConfig = field(default_factory=TinyDecoderConfig)
    loss: DecoderLossConfig = field(default_factory=DecoderLossConfig)
    optim: DecoderOptimConfig = field(default_factory=DecoderOptimConfig)
    generated: GeneratedLatentsConfig = field(default_factory=GeneratedLatentsConfig)
    run: RunConfig = field(default_factory=decoder_run_defaults)

    def validate(self) -> "DecoderTrainConfig":
        self.decoder = TinyDecoderConfig(**dataclasses.asdict(self.decoder))  # its own checks
        checks = common_checks(self) + [
            (self.run.preview_every == 0 and not self.run.export_single_file and not self.run.gradient_checkpointing,
             "run.preview_every, run.export_single_file and run.gradient_checkpointing are SF-V settings: leave them 0 / false for train-decoder"),
            (min(self.loss.pixel_weight, self.loss.edge_weight, self.loss.temporal_weight, self.loss.adversarial_weight) >= 0,
             "loss.pixel_weight, edge_weight, temporal_weight and adversarial_weight must be >= 0"),
            (0 <= self.loss.adversarial_start < max(self.run.steps, 1) or self.loss.adversarial_weight == 0,
             f"loss.adversarial_start ({self.loss.adversarial_start}) must be >= 0 and below run.steps ({self.run.steps}), or the discriminator never trains"),
            (self.optim.lr >= 0 and self.optim.lr_discriminator >= 0, "optim.lr and optim.lr_discriminator must be >= 0"),
            (self.optim.lr_schedule in LR_SCHEDULES, f"optim.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.optim.lr_schedule!r}"),
            (self.optim.discriminator_width >= 1, f"optim.discriminator_width must be >= 1, got {self.optim.discriminator_width}"),
            (0.0 <= self.optim.ema_decay < 1.0, f"optim.ema_decay must be in [0, 1) (0: no averaging), got {self.optim.ema_decay}"),
            (0.0 <= self.generated.fraction <= 1.0, f"generated.fraction is a share of the clips: give 0..1, got {self.generated.fraction}"),
            (not self.generated.sfv_unet or self.generated.fraction > 0,
             "generated.sfv_unet is set but generated.fraction is 0, so it would load and never be used: give a fraction > 0 or leave sfv_unet empty"),
        ]
        return raise_failed(checks, self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PatchDiscriminator(nn.Module):
    """Decoded clips (clips, frames, 3, H, W) and the latents they decode -> a logit for each
    space-time patch. Three strided 3D convs (time kernel 3: it sees motion), GroupNorm and leaky
    ReLUs, as pix2pix's PatchGAN, with the latent (upsampled to the pixels) as the condition: a
    decode is judged as the decode of its latent, not as any plausible clip."""

    def __init__(self, latent_channels: int, upscale: int, width: int = 32):
        super().__init__()
        self.upscale = upscale
        widths = (width, 2 * width, 4 * width)
        layers: list[nn.Module] = []
        channels = 3 + latent_channels
        for index, out in enumerate(widths):
            layers.append(nn.Conv3d(channels, out, (3, 4, 4), stride=(1, 2, 2), padding=1))
            if index:
                layers.append(nn.GroupNorm(8 if out % 8 == 0 else 1, out))
            layers.append(nn.LeakyReLU(0.2))
            channels = out
        layers.append(nn.Conv3d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor, raw_latents: torch.Tensor) -> torch.Tensor:
        latent = soft_clamp(nn.functional.interpolate(raw_latents.flatten(0, 1).float() * VAE_SCALING_FACTOR, scale_factor=float(self.upscale), mode="nearest"))
        x = torch.cat([pixels.float().flatten(0, 1), latent], dim=1).unflatten(0, pixels.shape[:2])
        return self.net(x.transpose(1, 2))  # (clips, 3 + C, frames, H, W)


class DecoderTrainer(RunTrainer):
    def check_before_load(self) -> None:
        """The SF-V UNet of `generated` against the base checkpoint, from headers only."""
        if self.cfg.generated.sfv_unet:
            from ..checkpoints import check_sfv_unet

            check_sfv_unet(self.cfg.generated.sfv_unet, base_unet_config(self.cfg.model.path), self.cfg.model.path)

    def build(self) -> list:
        cfg = self.cfg
        student = TinyDecoder(cfg.decoder)
        check_fits(student, self.model.vae)
        self.sfv_unet = self._load_sfv_unet() if cfg.generated.sfv_unet else None
        self.model.vae.requires_grad_(False).train(False)
        self.model.image_encoder.requires_grad_(False)
        # The teacher decodes every step: the VAE stays on the device (CLIP only while encoding).
        self.place_encoders(vae=True, image_encoder=not cfg.data.latent_cache)
        o = cfg.optim
        optimizer = torch.optim.AdamW(student.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        self.student, self.optimizer = self.accelerator.prepare(student.to(self.device), optimizer)
        self.ema = EMA(self.student.parameters(), o.ema_decay)
        self.discriminator = None
        if cfg.loss.adversarial_weight > 0:
            discriminator = PatchDiscriminator(cfg.decoder.latent_channels, cfg.decoder.upscale, o.discriminator_width)
            d_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=o.lr_discriminator, betas=(0.5, 0.9), weight_decay=0.0)
            self.discriminator, self.d_optimizer = self.accelerator.prepare(discriminator.to(self.device), d_optimizer)
        return {"ema": self.ema}

    def _load_sfv_unet(self) -> torch.nn.Module:
        """The SF-V UNet in place of the base's (which the decoder never uses), frozen, on the device."""
        from ..checkpoints import load_sfv_unet

        frozen_dtype = PRECISION_DTYPES[self.cfg.run.mixed_precision]
        sfv = load_sfv_unet(self.cfg.generated.sfv_unet, self.model, dtype=frozen_dtype, device=self.device)
        self.model = dataclasses.replace(self.model, unet=sfv.unet)
        return sfv.unet.requires_grad_(False).train(False)

    def vae_needed_after_cache(self) -> bool:
        return True

    @torch.no_grad()
    def with_generated(self, latents: torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, int]:
        """Model-space latents with a share of the clips (drawn from the run's checkpointed noise
        generator) replaced by SF-V's 1-step sample from their own conditioning; and how many."""
        if self.sfv_unet is None:
            return latents, 0
        picked = torch.rand(len(latents), generator=self.progress.noise) < self.cfg.generated.fraction
        if not picked.any():
            return latents, 0
        with self.accelerator.autocast():
            generated = sample(self.sfv_unet, cond.select(picked.to(cond.image_latent.device)), self.progress.noise, steps=1)
        if not torch.isfinite(generated).all():
            raise InputError(f"the SF-V UNet {self.cfg.generated.sfv_unet} sampled NaN or infinite latents: check that file, or train with run.mixed_precision fp32 / bf16")
        latents = latents.clone()
        latents[picked.to(latents.device)] = generated.to(latents)
        return latents, int(picked.sum())

    @torch.no_grad()
    def teacher_pixels(self, raw_latents: torch.Tensor) -> torch.Tensor:
        """The checkpoint's temporal decoder on raw latents (clips, frames, 4, h, w) -> (clips, frames, 3, H, W)."""
        vae = self.model.vae
        param = next(vae.parameters())
        clips, frames = raw_latents.shape[:2]
        with self.accelerator.autocast():
            pixels = vae.decode(raw_latents.flatten(0, 1).to(param.dtype), num_frames=frames).sample
        return pixels.float().unflatten(0, (clips, frames))

    def adversarial(self) -> bool:
        return self.discriminator is not None and self.progress.step >= self.cfg.loss.adversarial_start

    def loss(self, raw_latents: torch.Tensor) -> tuple[torch.Tensor, dict, tuple | None]:
        """The student's loss, its logged parts, and (teacher, student pixels) for the discriminator's step."""
        teacher = self.teacher_pixels(raw_latents)
        with self.accelerator.autocast():
            student, _state = self.student(raw_latents)
        parts = decoder_distillation_losses(student, teacher)
        weights = self.cfg.loss
        loss = weights.pixel_weight * parts["pixel"] + weights.edge_weight * parts["edge"] + weights.temporal_weight * parts["temporal"]
        logged = {f"l1_{name}": value.item() for name, value in parts.items()}
        if not self.adversarial():
            if self.discriminator is not None:  # the CSV's columns are fixed by its first row
                logged.update(g_hinge=float("nan"), d_hinge=float("nan"))
            return loss, {"loss": loss.item(), **logged}, None
        # The unwrapped discriminator, frozen: no DDP hook fires and no gradient lands on it.
        judge = self.accelerator.unwrap_model(self.discriminator)
        judge.requires_grad_(False)
        with self.accelerator.autocast():
            adversarial = hinge_generator([judge(student, raw_latents)])
        judge.requires_grad_(True)
        loss = loss + weights.adversarial_weight * adversarial
        return loss, {"loss": loss.item(), **logged, "g_hinge": adversarial.item()}, (teacher, student.detach())

    def discriminator_loss(self, pixels: tuple, raw_latents: torch.Tensor) -> torch.Tensor:
        teacher, student = pixels
        with self.accelerator.autocast():
            return hinge_discriminator([self.discriminator(teacher, raw_latents)], [self.discriminator(student, raw_latents)])

    def train_step(self) -> dict:
        acc, accumulation = self.accelerator, self.cfg.optim.gradient_accumulation
        totals: dict = defaultdict(float)
        for micro in range(accumulation):
            latents, cond, skipped = self.next_inputs()
            latents, generated = self.with_generated(latents, cond)
            totals["skipped_sources"] += skipped
            if self.sfv_unet is not None:
                totals["generated_clips"] += generated
            raw = latents / VAE_SCALING_FACTOR  # the cache holds model-space latents
            last = micro == accumulation - 1
            with nullcontext() if last else acc.no_sync(self.student):
                loss, parts, pixels = self.loss(raw)
                acc.backward(loss / accumulation)
            if pixels is not None:
                with nullcontext() if last else acc.no_sync(self.discriminator):
                    d_loss = self.discriminator_loss(pixels, raw)
                    acc.backward(d_loss / accumulation)
                parts["d_hinge"] = d_loss.item()
            for key, value in parts.items():
                totals[key] += value / accumulation
        if self.cfg.optim.grad_clip > 0:
            acc.clip_grad_norm_(self.student.parameters(), self.cfg.optim.grad_clip)
        o = self.cfg.optim
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled_lr(o.lr, o.lr_schedule, self.progress.step, self.cfg.run.steps)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.adversarial():
            self.d_optimizer.step()
            self.d_optimizer.zero_grad(set_to_none=True)
        self.ema.update()
        self.progress.step += 1
        return dict(totals)

    def export(self, folder: str | Path | None = None) -> list[Path]:
        """The student's EMA as a tiny decoder file (config in its header), loadable by `load_tiny_decoder`."""
        acc = self.accelerator
        folder = Path(folder) if folder else self.run_dir / "export"
        with self.ema.swapped_in():
            state = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in acc.get_state_dict(self.student).items()}
        paths: list[Path] = []
        if acc.is_main_process:
            decoder = TinyDecoder(self.cfg.decoder)
            decoder.load_state_dict(state, strict=True)
            # The teacher by file name: a shared decoder should not carry the trainer's folders.
            notes = {"teacher": Path(self.cfg.model.path).name, "steps": self.progress.step}
            paths.append(Path(save_tiny_decoder(decoder, folder / DECODER_FILE, PRECISION_DTYPES[self.cfg.run.export_dtype], notes)))
            log.info("exported %s", paths[0])
        acc.wait_for_everyone()
        return paths
