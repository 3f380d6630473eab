"""Configs from shapes. Head counts are not visible in any shape, so they follow SVD's head
widths (models.attention_heads); everything else below is read from the file."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .. import models
from ..convert import CLIP_ROOT, FIRST_STAGE_ROOT, UNET_ROOT
from ..errors import CheckpointError
from .headers import TensorEntry

def _shape(entries: Mapping[str, TensorEntry], key: str) -> tuple[int, ...]:
    if key not in entries:
        raise CheckpointError(f"cannot read the architecture: tensor {key!r} is missing (the file is incomplete or not an SVD-family model).")
    return entries[key].shape


def _indices(entries: Iterable[str], prefix: str) -> list[int]:
    """Sorted distinct N in keys `prefix` + "N.*"."""
    found = set()
    for key in entries:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _unet_config(widths, layers, depths, mid_depth, cross_attention_dim, in_channels, out_channels, added_features) -> dict:
    """models.unet_config for these numbers; `depths` is the transformer depth per level (0: none),
    `added_features` the width of the added conditioning (SVD: fps, motion, aug x 256)."""
    if added_features % 3:
        raise CheckpointError(f"unsupported UNet: its added conditioning takes {added_features} features, SVD's takes 3 x 256 = 768 (fps, motion, augmentation).")
    if len(set(depths) - {0} | {mid_depth}) == 1:
        transformer_layers = mid_depth
    else:
        # diffusers gives the mid block the last level's depth: keep that slot for it.
        if depths[-1] not in (0, mid_depth):
            raise CheckpointError(f"unsupported UNet: last level's transformer depth {depths[-1]} differs from the middle block's {mid_depth}.")
        transformer_layers = tuple(depth or mid_depth for depth in depths)
    config = models.unet_config(
        block_out_channels=tuple(widths),
        layers_per_block=layers,
        cross_attention_dim=cross_attention_dim,
        transformer_layers_per_block=transformer_layers,
        in_channels=in_channels,
        out_channels=out_channels,
        addition_time_embed_dim=added_features // 3,
    )
    # unet_config puts attention on every level but the last (SVD's layout); follow the file.
    config["down_block_types"] = tuple("CrossAttnDownBlockSpatioTemporal" if d else "DownBlockSpatioTemporal" for d in depths)
    config["up_block_types"] = tuple("CrossAttnUpBlockSpatioTemporal" if d else "UpBlockSpatioTemporal" for d in reversed(depths))
    return config


def infer_unet_config_sgm(entries: Mapping[str, TensorEntry], root: str = UNET_ROOT) -> dict:
    """UNet config from SGM names: input_blocks.0 is conv_in, then per level `layers` resnets
    (each maybe followed by a transformer at slot .1) and one downsampler slot (.0.op)."""
    blocks = _indices(entries, root + "input_blocks.")
    downsamplers = [i for i in blocks if f"{root}input_blocks.{i}.0.op.weight" in entries]
    per_level = downsamplers[0] if downsamplers else len(blocks)
    levels = len(downsamplers) + 1
    if per_level < 2 or len(blocks) != levels * per_level:
        raise CheckpointError(f"unsupported UNet block layout: {len(blocks)} input blocks with downsamplers at {downsamplers}.")
    widths, depths = [], []
    for level in range(levels):
        block = f"{root}input_blocks.{1 + level * per_level}"
        widths.append(_shape(entries, f"{block}.0.out_layers.3.weight")[0])
        depths.append(len(_indices(entries, f"{block}.1.transformer_blocks.")))
    return _unet_config(
        widths,
        per_level - 1,
        depths,
        mid_depth=len(_indices(entries, root + "middle_block.1.transformer_blocks.")),
        cross_attention_dim=_shape(entries, root + "middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1],
        in_channels=_shape(entries, root + "input_blocks.0.0.weight")[1],
        out_channels=_shape(entries, root + "out.2.weight")[0],
        added_features=_shape(entries, root + "label_emb.0.0.weight")[1],
    )


def infer_unet_config_diffusers(entries: Mapping[str, TensorEntry]) -> dict:
    """UNet config from diffusers names (an SF-V UNet file saved by diffusers or by us)."""
    levels = len(_indices(entries, "down_blocks."))
    return _unet_config(
        [_shape(entries, f"down_blocks.{level}.resnets.0.spatial_res_block.conv1.weight")[0] for level in range(levels)],
        len(_indices(entries, "down_blocks.0.resnets.")),
        [len(_indices(entries, f"down_blocks.{level}.attentions.0.transformer_blocks.")) for level in range(levels)],
        mid_depth=len(_indices(entries, "mid_block.attentions.0.transformer_blocks.")),
        cross_attention_dim=_shape(entries, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight")[1],
        in_channels=_shape(entries, "conv_in.weight")[1],
        out_channels=_shape(entries, "conv_out.weight")[0],
        added_features=_shape(entries, "add_embedding.linear_1.weight")[1],
    )


def infer_vae_config(entries: Mapping[str, TensorEntry]) -> dict:
    """VAE config from the temporal decoder (always present): up.I has layers+1 resnets of
    width block_out_channels[I]."""
    root = FIRST_STAGE_ROOT + "decoder."
    levels = len(_indices(entries, root + "up."))
    layers = len(_indices(entries, root + "up.0.block.")) - 1
    if layers != 2:  # diffusers' temporal decoder ties its mid block to this count; SGM's has 2
        raise CheckpointError(f"unsupported VAE: {layers + 1} resnets per decoder level (SVD has 3); diffusers' temporal decoder cannot hold it.")
    return models.vae_config(
        block_out_channels=tuple(_shape(entries, f"{root}up.{level}.block.0.conv2.weight")[0] for level in range(levels)),
        layers_per_block=layers,
        latent_channels=_shape(entries, root + "conv_in.weight")[1],
    )


def infer_image_encoder_config(entries: Mapping[str, TensorEntry]) -> dict:
    """CLIP vision config from the OpenCLIP tower: patch conv, positions = grid^2 + 1, layers."""
    hidden, _, patch, _ = _shape(entries, CLIP_ROOT + "conv1.weight")
    positions = _shape(entries, CLIP_ROOT + "positional_embedding")[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointError(f"unsupported image encoder: {positions} positions is not a square grid plus a class token.")
    return models.image_encoder_config(
        hidden_size=hidden,
        num_hidden_layers=len(_indices(entries, CLIP_ROOT + "transformer.resblocks.")),
        intermediate_size=_shape(entries, CLIP_ROOT + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        projection_dim=_shape(entries, CLIP_ROOT + "proj")[1],
        image_size=grid * patch,
        patch_size=patch,
    )


def infer_configs(entries: Mapping[str, TensorEntry]) -> models.SVDConfigs:
    """All three configs of a single file."""
    return models.SVDConfigs(
        unet=infer_unet_config_sgm(entries),
        vae=infer_vae_config(entries),
        image_encoder=infer_image_encoder_config(entries),
    )
