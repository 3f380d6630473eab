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

import logging
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch

from ..errors import InputError
from ..models import SVDModel
from ..sampling import Conditioning, denoise
from .config import cpu_advice
from .diagnostics import GradientProbe, accuracy_parts, finish_accuracies
from .adapters import LoraAdapters, adapter_weights, base_weights, describe
from .discriminator import DiscriminatorHeads, FrozenUNetEncoder
from .ema import EMA
from .loop import PRECISION_DTYPES, RunTrainer, base_unet_config
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

UNET_FILE = "sfv_unet.safetensors"
LORA_FILE = "sfv_lora.safetensors"
SINGLE_FILE = "sfv_svd_single_file.safetensors"


def per_clip(values: torch.Tensor) -> torch.Tensor:
    """(clips,) -> (clips, 1, 1, 1, 1), to scale latents (clips, frames, 4, h, w)."""
    return values.reshape(-1, 1, 1, 1, 1)


class Trainer(RunTrainer):
    def build(self) -> list:
        cfg = self.cfg
        if self.device.type == "cpu" and (advice := cpu_advice(cfg)):
            log.warning(advice)
        self.adversarial = cfg.loss.mode == "sfv_adversarial"
        self._build_networks()
        self._build_optimizers()
        self.ema = EMA(self.trained_parameters(), cfg.optim.ema_decay)
        self.last_cond: Conditioning | None = None
        self.last_r1 = float("nan")
        return {**({"heads": self.heads} if self.adversarial else {}), "ema": self.ema, **({"adapters": self.adapters} if self.adapters else {})}

    def check_before_load(self) -> None:
        """LoRA targets and rank, resolved on the architecture the checkpoint's header describes."""
        if self.cfg.model.adapter == "lora":
            from .adapters import check_model_targets

            check_model_targets(self.cfg.model, base_unet_config(self.cfg.model.path))

    def check_checkpoint(self, folder: Path) -> None:
        """A checkpoint of a LoRA run resumes only as that LoRA run, and a full one only as a full one."""
        from .state import read_entry

        saved = read_entry(folder, "adapters")
        saved_spec = {k: v for k, v in saved.items() if k != "weights"} if saved else None
        current = self.adapters.spec if self.adapters else None
        if saved_spec != current:
            raise InputError(f"the checkpoint in {folder} was trained with {describe(saved_spec)}, the config says {describe(current)}: "
                             "set the checkpoint's model settings to resume it, or point run.output_dir at a new folder")

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.generator.parameters() if p.requires_grad]

    def vae_needed_after_cache(self) -> bool:
        return self.cfg.run.preview_every > 0

    # ---- construction -------------------------------------------------------------------

    def _build_networks(self) -> None:
        cfg, model = self.cfg, self.model
        frozen_dtype = PRECISION_DTYPES[cfg.run.mixed_precision]
        unet = model.unet
        self.encoder = self.heads = self.adapters = None
        lora = cfg.model.adapter == "lora"
        # LoRA: the encoder shares the frozen base (adapters off while it runs), except under
        # FSDP, whose sharded root weights only its own forward gathers: there it is a copy.
        shared = lora and not self._fsdp()
        if self.adversarial and not shared:
            # A copy of the ORIGINAL UNet's encoder half, taken before G changes. Kept in fp32 for
            # approximate R1, whose passes run in fp32 (autocast still runs the others in bf16).
            fp32_r1 = cfg.loss.r1_weight > 0 and cfg.loss.r1_mode == "approximate"
            self.encoder = FrozenUNetEncoder(unet, cfg.discriminator.features).to(self.device, torch.float32 if fp32_r1 else frozen_dtype)
        if lora:
            self.adapters = LoraAdapters(unet, cfg.model)
            log.info("LoRA: %s on %d layers, %d trainable parameters", describe(self.adapters.spec), len(self.adapters.layers),
                     sum(p.numel() for p in self.adapters.parameters()))
        if self.adversarial and shared:
            # The base stays float32 (it is the generator's too), as approximate R1's passes need.
            self.encoder = FrozenUNetEncoder(unet, cfg.discriminator.features, base_context=self.adapters.off)
        if self.adversarial:
            self.heads = DiscriminatorHeads(
                self.encoder.channels,
                image_embed_dim=unet.config.cross_attention_dim,
                width=cfg.discriminator.head_channels,
                cond_width=cfg.discriminator.cond_channels,
                kind=cfg.discriminator.heads,
            ).to(self.device)
        if not lora:
            unet.requires_grad_(True)
        unet.train()
        if cfg.run.gradient_checkpointing:
            enable_activation_checkpointing(unet, *([self.adapters.recompute] if lora else []))
            if self.encoder is not None and not shared:
                enable_activation_checkpointing(self.encoder)
        on_the_fly = not cfg.data.latent_cache
        self.place_encoders(vae=on_the_fly or cfg.run.preview_every > 0, image_encoder=on_the_fly)

    def _build_optimizers(self) -> None:
        o = self.cfg.optim
        betas = (o.beta1, o.beta2)
        trained = [p for p in self.model.unet.parameters() if p.requires_grad]
        opt_g = torch.optim.AdamW(trained, lr=o.lr_generator, betas=betas, weight_decay=o.weight_decay)
        self.generator, self.opt_g = self.accelerator.prepare(self.model.unet, opt_g)
        if self.adapters and not self._fsdp():
            # The adapter weights are saved with the trainer's own state; the frozen base is
            # the base file, so accelerate neither writes nor reads the UNet's weights.
            self.accelerator.register_save_state_pre_hook(self._drop_generator_weights)
            self.accelerator.register_load_state_pre_hook(self._skip_generator_weights)
        self.opt_d = None
        if self.adversarial:
            opt_d = torch.optim.AdamW(self.heads.parameters(), lr=o.lr_discriminator, betas=betas, weight_decay=o.weight_decay)
            self.opt_d = self.accelerator.prepare(opt_d)

    def _fsdp(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP

    # accelerate lists the models as they were before wrapping (DDP): the UNet itself.
    def _drop_generator_weights(self, models, weights, output_dir) -> None:
        for index, model in enumerate(models):
            if model is self.model.unet and index < len(weights):
                weights.pop(index)
                return

    def _skip_generator_weights(self, models, input_dir) -> None:
        for index, model in enumerate(models):
            if model is self.model.unet:
                models.pop(index)
                return

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
            acc.clip_grad_norm_(self.trained_parameters(), clip)  # also unscales fp16 gradients
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

    def after_step(self, step: int) -> None:
        if self.cfg.run.preview_every and step % self.cfg.run.preview_every == 0:
            self.preview()

    def export(self, folder: str | Path | None = None) -> list[Path]:
        """The EMA generator as an SF-V UNet file, or in LoRA mode as a LoRA file (either optionally
        also inside a full SVD single file)."""
        from ..checkpoints import save_single_file, save_unet_file

        acc = self.accelerator
        folder = Path(folder) if folder else self.run_dir / "export"
        with self.ema.swapped_in():
            # Gathers shards under FSDP (every process calls it); copied before the live weights return.
            state = acc.get_state_dict(self.generator)
            state = {k: v.detach().to("cpu", copy=True) for k, v in (adapter_weights(state) if self.adapters else state).items()}
        paths: list[Path] = []
        if acc.is_main_process:
            dtype = PRECISION_DTYPES[self.cfg.run.export_dtype]
            if self.adapters:
                unet, lora_path = self._export_lora(state, folder, dtype)
                paths.append(lora_path)
            else:
                unet = self._fresh_unet(state)
                paths.append(Path(save_unet_file(unet, folder / UNET_FILE, dtype=dtype)))
            if self.cfg.run.export_single_file:
                # The base model's VAE and image encoder, with the trained UNet (SF-V changes only the UNet).
                full = SVDModel(unet=unet, vae=self.model.vae, image_encoder=self.model.image_encoder, native_encoder=self.model.native_encoder)
                paths.append(Path(save_single_file(full, folder / SINGLE_FILE, dtype=dtype)))
            log.info("exported %s", ", ".join(map(str, paths)))
        acc.wait_for_everyone()
        return paths

    def _fresh_unet(self, state: dict) -> torch.nn.Module:
        """A plain UNet of the generator's config holding `state` (float32, CPU, eval mode)."""
        live = self.accelerator.unwrap_model(self.generator)
        unet = type(live).from_config(live.config)
        unet.load_state_dict({k: v.float().cpu() for k, v in state.items()}, strict=True)
        return unet.train(False).requires_grad_(False)

    def _export_lora(self, state: dict, folder: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Path]:
        """The LoRA file, and the base UNet with it merged (for the single file), the way the pack merges it."""
        from ..lora import merge_lora, save_lora

        layers = self.adapters.lora_layers(state)
        metadata = {"sfv_steps": str(self.progress.step), "sfv_recipe": self.cfg.loss.mode}
        path = Path(save_lora(folder / LORA_FILE, layers, self.adapters.unet.config, metadata, dtype=dtype))
        unet = None
        if self.cfg.run.export_single_file:
            unet = self._fresh_unet(base_weights(self.adapters.unet.state_dict()))
            merge_lora(unet, layers, 1.0)
        return unet, path
