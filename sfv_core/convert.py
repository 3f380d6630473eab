"""Key mapping between our models (diffusers / transformers names) and the original SVD file.

Pure functions on names, shapes and tensors: no file I/O (that is `checkpoints/`).

A `KeyMap` says, for every key of one of our modules, where its tensor lives in the original
single file (Stability's SGM layout, the `svd.safetensors` ComfyUI users keep) and how it is
stored there. The names are derived from the module's config (levels, layers per block,
which levels have attention) as module-prefix rules, applied to the key list of the module
built from that config; so narrower or wider variants map without any table to update.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

# Roots of the model parts inside the original single file.
UNET_ROOT = "model.diffusion_model."
FIRST_STAGE_ROOT = "first_stage_model."  # VAE decoder, and ComfyUI's (native) encoder
CLIP_ROOT = "conditioner.embedders.0.open_clip.model.visual."
# The encoder SVD used for the conditioning frame, with its quant_conv:
# conditioner.embedders.3.encoder.{encoder.*, quant_conv.*}.
CONDITIONING_ENCODER_ROOT = "conditioner.embedders.3.encoder."


@dataclass(frozen=True)
class Source:
    """Where one of our tensors lives in the original file, and how it is stored there.

    kind: "same"; "conv1x1" (our Linear [out, in] is a 1x1 conv [out, in, 1, 1] there);
    "transposed" (stored as [in, out]); "stacked" (slot `index` of `count` equal slices on
    dim 0 of one tensor, e.g. OpenCLIP's q, k, v in one in_proj_weight).
    """

    key: str
    kind: str = "same"
    index: int = 0
    count: int = 1


KeyMap = dict  # our key -> Source


def from_original(source: Source, tensor: torch.Tensor) -> torch.Tensor:
    """Our tensor from the original file's tensor `source.key`, as a view of it: the loader
    makes the one copy it needs (converting dtype in the same pass)."""
    if source.kind == "conv1x1":
        return tensor.flatten(1)  # [out, in, 1, 1] -> [out, in]; a no-op on [out, in]
    if source.kind == "transposed":
        return tensor.t()
    if source.kind == "stacked":
        return tensor.chunk(source.count, dim=0)[source.index]
    return tensor


def original_shapes(source: Source, our_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes the original tensor may have for our tensor of `our_shape` (first: the usual one)."""
    our_shape = tuple(our_shape)
    if source.kind == "conv1x1":
        return [our_shape + (1, 1), our_shape]  # some converted files already hold [out, in]
    if source.kind == "transposed":
        return [our_shape[::-1]]
    if source.kind == "stacked":
        return [(our_shape[0] * source.count,) + our_shape[1:]]
    return [our_shape]


def invert(keymap: KeyMap) -> dict[str, list[str]]:
    """Original key -> our keys read from it (several for a stacked tensor), in slot order."""
    inverse: dict[str, list[str]] = {}
    for our_key, source in sorted(keymap.items(), key=lambda item: item[1].index):
        inverse.setdefault(source.key, []).append(our_key)
    return inverse


def to_original(keymap: KeyMap, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the original file's tensors (stacked slots concatenated back)."""
    out: dict[str, torch.Tensor] = {}
    for original_key, our_keys in invert(keymap).items():
        source = keymap[our_keys[0]]
        if source.kind == "stacked":
            out[original_key] = torch.cat([state[key] for key in our_keys], dim=0)
        elif source.kind == "conv1x1":
            out[original_key] = state[our_keys[0]][:, :, None, None]
        elif source.kind == "transposed":
            out[original_key] = state[our_keys[0]].t().contiguous()
        else:
            out[original_key] = state[our_keys[0]]
    return out


# ---------------------------------------------------------------------------------------------
# Rules: our module prefix -> original module prefix. A key is renamed by its longest prefix
# (at a dot boundary) that has a rule; the rest of the key is kept as it is.


def _rename(key: str, rules: Mapping[str, str]) -> str | None:
    head, tail = key, ""
    while True:
        if head in rules:
            return rules[head] + tail
        cut = head.rfind(".")
        if cut < 0:
            return None
        head, tail = head[:cut], head[cut:] + tail


def _apply_rules(our_keys: Iterable[str], rules: Mapping[str, str], part: str) -> dict[str, str]:
    names = {}
    for key in our_keys:
        original = _rename(key, rules)
        if original is None:  # a layer the rules do not know: a bug here, not a user error
            raise ValueError(f"no original-layout name for {part} key {key!r}")
        names[key] = original
    return names


def _layers_per_block(config: Mapping) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):  # SGM's layout has one count for all levels
        raise ValueError(f"per-level layers_per_block {layers!r} has no SGM layout")
    return layers


# --- UNet: UNetSpatioTemporalConditionModel <-> SGM VideoUNet ---------------------------------

_UNET_RESNET_LAYERS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_resnet_rules(ours: str, theirs: str) -> dict[str, str]:
    """A VideoResBlock: diffusers splits it into spatial / temporal halves, SGM nests the
    temporal half under `time_stack`."""
    rules = {f"{ours}.time_mixer": f"{theirs}.time_mixer"}
    for half, root in (("spatial_res_block", theirs), ("temporal_res_block", f"{theirs}.time_stack")):
        for our_layer, their_layer in _UNET_RESNET_LAYERS.items():
            rules[f"{ours}.{half}.{our_layer}"] = f"{root}.{their_layer}"
    return rules


def _unet_transformer_rules(ours: str, theirs: str) -> dict[str, str]:
    """A SpatialVideoTransformer: same inner names (norm, proj_in, transformer_blocks.N, ...,
    time_mixer) except the temporal blocks and the frame-position embedding."""
    return {
        ours: theirs,
        f"{ours}.temporal_transformer_blocks": f"{theirs}.time_stack",
        f"{ours}.time_pos_embed.linear_1": f"{theirs}.time_pos_embed.0",
        f"{ours}.time_pos_embed.linear_2": f"{theirs}.time_pos_embed.2",
    }


def unet_rules(config: Mapping) -> dict[str, str]:
    """Module-prefix rules for a UNet of this config (diffusers -> SGM, no root)."""
    levels = len(config["block_out_channels"])
    per_level = _layers_per_block(config) + 1  # SGM: resnets, then one down/upsampler slot
    rules = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for level, block_type in enumerate(config["down_block_types"]):
        has_attention = block_type.startswith("CrossAttn")
        for layer in range(per_level - 1):
            index = 1 + level * per_level + layer
            rules |= _unet_resnet_rules(f"down_blocks.{level}.resnets.{layer}", f"input_blocks.{index}.0")
            if has_attention:
                rules |= _unet_transformer_rules(f"down_blocks.{level}.attentions.{layer}", f"input_blocks.{index}.1")
        if level < levels - 1:
            rules[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{(level + 1) * per_level}.0.op"
    rules |= _unet_resnet_rules("mid_block.resnets.0", "middle_block.0")
    rules |= _unet_transformer_rules("mid_block.attentions.0", "middle_block.1")
    rules |= _unet_resnet_rules("mid_block.resnets.1", "middle_block.2")
    for level, block_type in enumerate(config["up_block_types"]):
        has_attention = block_type.startswith("CrossAttn")
        for layer in range(per_level):
            index = level * per_level + layer
            rules |= _unet_resnet_rules(f"up_blocks.{level}.resnets.{layer}", f"output_blocks.{index}.0")
            if has_attention:
                rules |= _unet_transformer_rules(f"up_blocks.{level}.attentions.{layer}", f"output_blocks.{index}.1")
        if level < levels - 1:
            # The upsampler follows the last resnet (and its attention, when the level has one).
            slot = 2 if has_attention else 1
            rules[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{index}.{slot}.conv"
    return rules


def unet_keymap(config: Mapping, our_keys: Iterable[str], root: str = UNET_ROOT) -> KeyMap:
    """Our UNet keys -> SGM keys (under `root`; "" for a bare UNet file)."""
    names = _apply_rules(our_keys, unet_rules(config), "UNet")
    return {key: Source(root + name) for key, name in names.items()}


# --- VAE: AutoencoderKLTemporalDecoder <-> LDM encoder + SGM VideoDecoder ---------------------


def _vae_resnet_rules(ours: str, theirs: str) -> dict[str, str]:
    return {ours: theirs, f"{ours}.conv_shortcut": f"{theirs}.nin_shortcut"}


def _vae_video_resnet_rules(ours: str, theirs: str) -> dict[str, str]:
    """The decoder's VideoResBlock: an LDM resnet plus a Conv3d `time_stack` and `mix_factor`."""
    return _vae_resnet_rules(f"{ours}.spatial_res_block", theirs) | {
        f"{ours}.temporal_res_block.norm1": f"{theirs}.time_stack.in_layers.0",
        f"{ours}.temporal_res_block.conv1": f"{theirs}.time_stack.in_layers.2",
        f"{ours}.temporal_res_block.norm2": f"{theirs}.time_stack.out_layers.0",
        f"{ours}.temporal_res_block.conv2": f"{theirs}.time_stack.out_layers.3",
        f"{ours}.time_mixer.mix_factor": f"{theirs}.mix_factor",
    }


def _vae_attention_rules(ours: str, theirs: str) -> dict[str, str]:
    return {
        f"{ours}.group_norm": f"{theirs}.norm",
        f"{ours}.to_q": f"{theirs}.q",
        f"{ours}.to_k": f"{theirs}.k",
        f"{ours}.to_v": f"{theirs}.v",
        f"{ours}.to_out.0": f"{theirs}.proj_out",
    }


def vae_rules(config: Mapping) -> dict[str, str]:
    """Module-prefix rules for the whole VAE (our names -> LDM names relative to a root)."""
    levels = len(config["block_out_channels"])
    layers = _layers_per_block(config)
    if layers != 2:
        # diffusers' temporal decoder gives its mid block `layers` resnets; the VideoDecoder of
        # the original layout always has two (block_1, attn_1, block_2).
        raise ValueError(f"a temporal-decoder VAE with layers_per_block={layers} has no original single-file layout (needs 2)")
    rules = {
        "quant_conv": "quant_conv",
        "encoder.conv_in": "encoder.conv_in",
        "encoder.conv_norm_out": "encoder.norm_out",
        "encoder.conv_out": "encoder.conv_out",
        "decoder.conv_in": "decoder.conv_in",
        "decoder.conv_norm_out": "decoder.norm_out",
        "decoder.conv_out": "decoder.conv_out",
        "decoder.time_conv_out": "decoder.conv_out.time_mix_conv",
    }
    for level in range(levels):
        for layer in range(layers):
            rules |= _vae_resnet_rules(f"encoder.down_blocks.{level}.resnets.{layer}", f"encoder.down.{level}.block.{layer}")
        if level < levels - 1:
            rules[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
    rules |= _vae_resnet_rules("encoder.mid_block.resnets.0", "encoder.mid.block_1")
    rules |= _vae_attention_rules("encoder.mid_block.attentions.0", "encoder.mid.attn_1")
    rules |= _vae_resnet_rules("encoder.mid_block.resnets.1", "encoder.mid.block_2")

    rules |= _vae_video_resnet_rules("decoder.mid_block.resnets.0", "decoder.mid.block_1")
    rules |= _vae_attention_rules("decoder.mid_block.attentions.0", "decoder.mid.attn_1")
    rules |= _vae_video_resnet_rules("decoder.mid_block.resnets.1", "decoder.mid.block_2")
    for up in range(levels):
        level = levels - 1 - up  # diffusers counts up blocks from the bottom, LDM by resolution
        for layer in range(layers + 1):
            rules |= _vae_video_resnet_rules(f"decoder.up_blocks.{up}.resnets.{layer}", f"decoder.up.{level}.block.{layer}")
        if up < levels - 1:
            rules[f"decoder.up_blocks.{up}.upsamplers.0.conv"] = f"decoder.up.{level}.upsample.conv"
    return rules


_LDM_ATTENTION_WEIGHT = re.compile(r"\.attn_1\.(q|k|v|proj_out)\.weight$")  # 1x1 convs in LDM


def _vae_source(root: str, name: str) -> Source:
    return Source(root + name, "conv1x1" if _LDM_ATTENTION_WEIGHT.search(name) else "same")


def vae_keymap(
    config: Mapping,
    our_keys: Iterable[str],
    encoder_root: str = CONDITIONING_ENCODER_ROOT,
    decoder_root: str = FIRST_STAGE_ROOT,
) -> KeyMap:
    """Our VAE keys -> original keys: the decoder under `decoder_root`, the encoder and
    quant_conv under `encoder_root` (SVD's conditioning encoder by default)."""
    names = _apply_rules(our_keys, vae_rules(config), "VAE")
    return {
        key: _vae_source(decoder_root if key.startswith("decoder.") else encoder_root, name)
        for key, name in names.items()
    }


def native_encoder_keymap(config: Mapping, our_keys: Iterable[str], root: str = FIRST_STAGE_ROOT) -> KeyMap:
    """A bare encoder module's keys (no "encoder." in front) -> `root` + "encoder.*"."""
    names = _apply_rules(["encoder." + key for key in our_keys], vae_rules(config), "encoder")
    return {key.removeprefix("encoder."): _vae_source(root, name) for key, name in names.items()}


# --- Image encoder: CLIPVisionModelWithProjection <-> OpenCLIP VisionTransformer --------------


def image_encoder_keymap(config: Mapping, our_keys: Iterable[str], root: str = CLIP_ROOT) -> KeyMap:
    """Our CLIP keys -> OpenCLIP keys. q, k, v come from one stacked in_proj tensor; the output
    projection is stored transposed ([hidden, proj_dim])."""
    rules = {
        "vision_model.embeddings.class_embedding": "class_embedding",
        "vision_model.embeddings.patch_embedding": "conv1",
        "vision_model.embeddings.position_embedding.weight": "positional_embedding",
        "vision_model.pre_layrnorm": "ln_pre",
        "vision_model.post_layernorm": "ln_post",
    }
    stacked = {}
    for layer in range(config["num_hidden_layers"]):
        ours, theirs = f"vision_model.encoder.layers.{layer}", f"transformer.resblocks.{layer}"
        rules |= {
            f"{ours}.layer_norm1": f"{theirs}.ln_1",
            f"{ours}.self_attn.out_proj": f"{theirs}.attn.out_proj",
            f"{ours}.layer_norm2": f"{theirs}.ln_2",
            f"{ours}.mlp.fc1": f"{theirs}.mlp.c_fc",
            f"{ours}.mlp.fc2": f"{theirs}.mlp.c_proj",
        }
        for index, projection in enumerate("qkv"):
            for param in ("weight", "bias"):
                stacked[f"{ours}.self_attn.{projection}_proj.{param}"] = Source(
                    f"{root}{theirs}.attn.in_proj_{param}", "stacked", index, 3
                )
    keymap = {}
    for key in our_keys:
        if key in stacked:
            keymap[key] = stacked[key]
        elif key == "visual_projection.weight":
            keymap[key] = Source(root + "proj", "transposed")
        else:
            keymap[key] = Source(root + _apply_rules([key], rules, "image encoder")[key])
    return keymap


def identity_keymap(our_keys: Iterable[str], root: str = "") -> KeyMap:
    """Files already in our names (diffusers folders, diffusers-named UNet files)."""
    return {key: Source(root + key) for key in our_keys}
