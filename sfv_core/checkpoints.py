"""Loading and writing SVD-family weights, offline, safetensors only.

Formats read:
- the original single file (`svd.safetensors`, what ComfyUI users keep in models/checkpoints);
- a diffusers folder (`unet/`, `vae/`, `image_encoder/`, each with config.json + safetensors);
- an SF-V UNet file (diffusers or SGM names) that replaces the UNet of a loaded model.

Loading is strict and lean: configs are inferred from tensor SHAPES in the header, the
modules are built on the meta device, every name and shape is checked before any tensor is
read, then tensors are read one at a time straight into the target dtype and assigned into
the modules (about 1x the model in memory). Every failure a user can cause raises
`CheckpointError` with a message naming what was found and what is expected.

What a single file may hold besides the model parts (e.g. `denoiser.*`, `model_ema.*`, the
2D decoder of the conditioning autoencoder) is not used for inference: it is ignored and
listed in `SVDModel.notes`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import convert, models
from .convert import CLIP_ROOT, CONDITIONING_ENCODER_ROOT, FIRST_STAGE_ROOT, UNET_ROOT
from .errors import CheckpointError
from .files import atomic_path
from .models import SVDModel

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit; a larger "length" means not safetensors
_LIST_LIMIT = 20  # names listed per kind of mismatch in an error message

# Parts of the single file this loader reads; anything else is ignored (and noted).
_COND_ENCODER = CONDITIONING_ENCODER_ROOT + "encoder."
_COND_QUANT_CONV = CONDITIONING_ENCODER_ROOT + "quant_conv."
_NATIVE_ENCODER = FIRST_STAGE_ROOT + "encoder."
_SINGLE_FILE_ROOTS = (UNET_ROOT, FIRST_STAGE_ROOT, CLIP_ROOT, _COND_ENCODER, _COND_QUANT_CONV)

_DIFFUSERS_PARTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "image_encoder": "model"}
_NATIVE_ENCODER_FOLDER = "native_encoder"  # our addition to the diffusers layout (see save_diffusers_folder)


# ---------------------------------------------------------------------------------------------
# Reading safetensors headers and tensors


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int = 0  # where its bytes start in its file


@dataclasses.dataclass
class Weights:
    """The tensors of one or more safetensors files, known from their headers only."""

    label: str  # how messages name it: a path
    entries: dict[str, TensorEntry]
    files: dict[str, Path]  # key -> the file holding it (several files: a sharded part)

    @contextmanager
    def reader(self) -> Iterator[Callable[[str], torch.Tensor]]:
        """Yields get(key) -> a fresh CPU tensor in the file's dtype.

        Plain reads into a new buffer, not safetensors' memory map: mapped pages that were
        read stay in the process's resident memory until the whole file is unmapped, so
        converting dtype on the way (fp32 file -> fp16 model) would peak at file + model.
        """
        with ExitStack() as stack:
            handles = {path: stack.enter_context(path.open("rb", buffering=0)) for path in set(self.files.values())}
            yield lambda key: _read_tensor(handles[self.files[key]], self.entries[key], key)


def _read_tensor(handle, entry: TensorEntry, key: str) -> torch.Tensor:
    data = torch.empty(math.prod(entry.shape) * entry.dtype.itemsize, dtype=torch.uint8)
    view, filled = memoryview(data.numpy()), 0
    handle.seek(entry.offset)
    while filled < len(view):  # a read may return less than asked
        count = handle.readinto(view[filled:])
        if not count:  # the file shrank after its header was checked
            raise CheckpointError(f"{handle.name} ended while reading {key!r}: the file is truncated, download it again.")
        filled += count
    return data.view(entry.dtype).reshape(entry.shape)


def _existing_path(path) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise CheckpointError(f"{resolved} does not exist: check the path (for ComfyUI, the file goes in models/checkpoints).")
    return resolved


def _looks_pickled(first_bytes: bytes) -> bool:
    """torch.save output: a zip archive ("PK"), or a bare pickle (0x80, protocol 2-5)."""
    return first_bytes.startswith(b"PK\x03\x04") or (first_bytes[:1] == b"\x80" and first_bytes[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _refuse_pickle(path: Path, first_bytes: bytes = b"") -> None:
    # A pickle can run code when it is loaded, so it is never unpickled here, not even to look.
    if path.suffix.lower() in PICKLE_SUFFIXES or _looks_pickled(first_bytes):
        raise CheckpointError(
            f"{path} is a pickle checkpoint ({path.suffix or 'torch.save'} format), which is refused because loading a pickle "
            f"can run arbitrary code. Use the .safetensors version of these weights (the same model repository usually has one), "
            f"or convert it once in a trusted environment: safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')."
        )


def read_safetensors_header(path) -> Weights:
    """Validate a safetensors file from its header and size, without reading tensor data.

    A truncated file (interrupted download or copy) is caught here: the header's data offsets
    must fit in the file.
    """
    path = _existing_path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, expected a .safetensors file here.")
    _refuse_pickle(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is an empty file (0 bytes): an interrupted download or copy. Download it again.")
    with path.open("rb") as handle:
        start = handle.read(9)
        if start[8:9] != b"{":  # a safetensors header is JSON right after its 8-byte length
            _refuse_pickle(path, start)
        if len(start) < 9:
            raise CheckpointError(f"{path} is truncated ({size} bytes, not even a safetensors header): download it again.")
        header_bytes = int.from_bytes(start[:8], "little")
        if header_bytes > _MAX_HEADER_BYTES or start[8:9] != b"{":
            hint = " It looks like a web page (HTML), not weights." if start.lstrip()[:1] == b"<" else ""
            raise CheckpointError(f"{path} is not a safetensors file (its first bytes are {start!r}).{hint} Download the .safetensors file again.")
        if 8 + header_bytes > size:
            raise CheckpointError(
                f"{path} is truncated: its header alone should be {header_bytes} bytes but the file has {size} bytes. "
                f"An incomplete download or copy: download it again."
            )
        handle.seek(8)
        raw_header = handle.read(header_bytes)
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not a valid safetensors file (unreadable header: {error}). Download it again.") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a valid safetensors file (its header is not a table of tensors).")
    header.pop("__metadata__", None)
    entries, data_end = {}, 0
    for key, info in header.items():
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(dim) for dim in info["shape"])
            begin, end = (int(offset) for offset in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path} has a damaged or unsupported header entry for {key!r}: {info!r}. Download it again.") from error
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path} has a damaged header: tensor {key!r} of shape {shape} does not fit its data offsets. Download it again.")
        entries[key] = TensorEntry(dtype, shape, 8 + header_bytes + begin)
        data_end = max(data_end, end)
    needed = 8 + header_bytes + data_end
    if needed > size:
        raise CheckpointError(
            f"{path} is truncated: its header says the tensor data runs to {needed} bytes but the file has only {size} bytes "
            f"({100 * size / needed:.1f}%). An incomplete download or copy: download it again."
        )
    return Weights(str(path), entries, {key: path for key in entries})


def _read_sharded(index_path: Path) -> Weights:
    """A part split over several files, listed by a `*.safetensors.index.json`."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{index_path} is not a valid safetensors index ({error}).") from error
    entries, files = {}, {}
    for shard_name in sorted(set(weight_map.values())):
        shard = read_safetensors_header(index_path.parent / shard_name)
        entries |= shard.entries
        files |= shard.files
    return Weights(str(index_path.parent), entries, files)


# ---------------------------------------------------------------------------------------------
# What a file is


_LORA_KEY = re.compile(r"lora_unet_|lora_te\d?_|\.lora_(down|up|A|B)\.|\.lora\.(down|up)\.|\.lora_magnitude")


def _any_startswith(keys: Iterable[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)


def _examples(keys: Iterable[str], count: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:count]) + (f", ... ({len(keys)} in all)" if len(keys) > count else "")


def _image_model_family(keys: set[str]) -> str:
    if _any_startswith(keys, "cond_stage_model.transformer."):
        return "a Stable Diffusion 1.x (SD1.5-style) image checkpoint (CLIP text encoder under cond_stage_model.transformer.)"
    if _any_startswith(keys, "cond_stage_model.model."):
        return "a Stable Diffusion 2.x image checkpoint (OpenCLIP text encoder under cond_stage_model.model.)"
    if _any_startswith(keys, "conditioner.embedders.1.model.") or _any_startswith(keys, "conditioner.embedders.0.transformer."):
        return "an SDXL image checkpoint (text encoders under conditioner.embedders.0/1, label_emb for size conditioning)"
    return "an image diffusion model"


def detect(keys: Iterable[str], label: str) -> tuple[str, str, str]:
    """(kind, layout, unet root) of a safetensors file from its key names.

    kind: "svd_single_file" (UNet + VAE + image encoder) or "sfv_unet" (a UNet only);
    layout: "sgm" (Stability's names) or "diffusers". Anything else raises CheckpointError.
    """
    keys = set(keys)
    expected = (
        "SF-V needs Stable Video Diffusion img2vid weights: the single file (svd.safetensors / svd_xt.safetensors, "
        "keys model.diffusion_model.* with temporal 'time_stack' layers, first_stage_model.*, conditioner.embedders.*), "
        "a diffusers folder of it, or an SF-V UNet file."
    )
    lora = sorted(key for key in keys if _LORA_KEY.search(key))
    if lora:
        raise CheckpointError(f"{label} is a LoRA (keys like {lora[0]!r}), not a full model. {expected}")
    if _any_startswith(keys, UNET_ROOT) or "input_blocks.0.0.weight" in keys:
        if not any("time_stack" in key for key in keys):
            raise CheckpointError(f"{label} is {_image_model_family(keys)}: its UNet has no temporal layers (no 'time_stack' keys). {expected}")
        if not _any_startswith(keys, UNET_ROOT):
            return "sfv_unet", "sgm", ""
        if _any_startswith(keys, FIRST_STAGE_ROOT) or _any_startswith(keys, "conditioner."):
            return "svd_single_file", "sgm", UNET_ROOT
        return "sfv_unet", "sgm", UNET_ROOT
    if "conv_in.weight" in keys and _any_startswith(keys, "down_blocks."):
        if not any(".temporal_res_block." in key for key in keys):
            raise CheckpointError(f"{label} is a diffusers image UNet (no temporal layers), not SVD's UNetSpatioTemporalConditionModel. {expected}")
        return "sfv_unet", "diffusers", ""
    raise CheckpointError(f"{label} is not an SVD-family checkpoint; it holds {len(keys)} tensors such as {_examples(keys)}. {expected}")


# ---------------------------------------------------------------------------------------------
# Configs from shapes. Head counts are not visible in any shape, so they follow SVD's head
# widths (models.attention_heads); everything else below is read from the file.


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


# ---------------------------------------------------------------------------------------------
# Strict loading


@dataclasses.dataclass
class _Part:
    """One module to fill: built on the meta device, with where each of its tensors comes from."""

    module: torch.nn.Module
    keymap: convert.KeyMap
    provided: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # our keys not read from the file

    def read_map(self) -> convert.KeyMap:
        return {key: source for key, source in self.keymap.items() if key not in self.provided}


def _empty(build: Callable[[dict], torch.nn.Module], config: dict) -> torch.nn.Module:
    """The module with no storage: parameters are allocated only when the weights are assigned."""
    with torch.device("meta"):
        return build(config)


def _listing(title: str, names: list[str]) -> str:
    shown = "\n    ".join(names[:_LIST_LIMIT])
    more = f"\n    ... and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else ""
    return f"\n  {len(names)} {title}:\n    {shown}{more}"


def _check(parts: list[_Part], weights: Weights, owned_roots: tuple[str, ...], what: str) -> None:
    """Every expected tensor present with its shape, and nothing unknown under `owned_roots`;
    decided from the header before any data is read. Names are the file's names."""
    missing, wrong_shape, consumed = [], [], set()
    for part in parts:
        shapes = {key: tuple(tensor.shape) for key, tensor in part.module.state_dict().items()}
        for our_key, source in part.read_map().items():
            if source.key in consumed:
                continue  # the other slots of a stacked tensor
            consumed.add(source.key)
            entry = weights.entries.get(source.key)
            allowed = convert.original_shapes(source, shapes[our_key])
            if entry is None:
                missing.append(source.key)
            elif entry.shape not in allowed:
                wrong_shape.append(f"{source.key}: file {list(entry.shape)}, expected {list(allowed[0])}")
    unexpected = sorted(key for key in weights.entries if key.startswith(owned_roots) and key not in consumed)
    if missing or unexpected or wrong_shape:
        message = f"{weights.label} does not match {what}."
        for title, names in (("missing tensors", sorted(missing)), ("unexpected tensors", unexpected), ("tensors with the wrong shape", wrong_shape)):
            if names:
                message += _listing(title, names)
        raise CheckpointError(message + "\nThe file may be damaged or a variant this loader does not know.")


def _cast(tensor: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)


def _read_state(part: _Part, get: Callable[[str], torch.Tensor], dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Our state dict of `part`, each tensor read once and cast before the next is read."""
    read_map = part.read_map()
    state = {}
    for original_key, our_keys in convert.invert(read_map).items():
        tensor = get(original_key)
        for our_key in our_keys:
            state[our_key] = _cast(convert.from_original(read_map[our_key], tensor), dtype, device)
        del tensor
    return state | {key: _cast(tensor, dtype, device) for key, tensor in part.provided.items()}


# Non-persistent buffers are not in any file; after a meta-device build they must be rebuilt.
_NON_PERSISTENT_BUFFERS = {
    "position_ids": lambda meta: torch.arange(meta.shape[-1]).expand(meta.shape),  # CLIP embeddings
}


def _materialize_buffers(module: torch.nn.Module, device) -> None:
    for owner_name, owner in module.named_modules():
        for name, buffer in list(owner.named_buffers(recurse=False)):
            if buffer.is_meta:
                if name not in _NON_PERSISTENT_BUFFERS:  # a new buffer in a library update: fail loudly
                    raise RuntimeError(f"no recipe to rebuild the buffer {owner_name}.{name} after a meta-device build")
                owner.register_buffer(name, _NON_PERSISTENT_BUFFERS[name](buffer).to(device), persistent=False)


def _fill(part: _Part, state: dict[str, torch.Tensor], device) -> torch.nn.Module:
    part.module.load_state_dict(state, strict=True, assign=True)
    _materialize_buffers(part.module, device)
    return part.module


def _load_parts(parts: list[_Part], weights: Weights, dtype: torch.dtype, device) -> None:
    with weights.reader() as get:
        for part in parts:
            _fill(part, _read_state(part, get, dtype, device), device)


def _ignored_note(keys: Iterable[str], roots: tuple[str, ...]) -> list[str]:
    ignored = sorted(key for key in keys if not key.startswith(roots))
    if not ignored:
        return []
    return [f"ignored {len(ignored)} tensors that are not part of the inference model: {_examples(ignored)}"]


def _identity_quant_conv(vae_config: dict) -> dict[str, torch.Tensor]:
    """quant_conv that passes the encoder's moments through: first_stage_model.encoder's
    output is already what SVD's first stage samples from (it has no quant_conv)."""
    channels = 2 * vae_config["latent_channels"]
    return {"quant_conv.weight": torch.eye(channels)[:, :, None, None], "quant_conv.bias": torch.zeros(channels)}


# ---------------------------------------------------------------------------------------------
# The single file


def _single_file_parts(entries: Mapping[str, TensorEntry], configs: models.SVDConfigs, label: str) -> tuple[list[_Part], _Part | None, list[str]]:
    """UNet, VAE and image-encoder parts of a single file, the optional native-encoder part, notes.

    Encoder policy: the VAE's encoder + quant_conv come from conditioner.embedders.3 (the encoder
    SVD conditioned on); without it, from first_stage_model.encoder with an identity quant_conv.
    When both are present, first_stage_model.encoder is read too, to be kept only if it differs.
    """
    has_conditioning_encoder = _any_startswith(entries, _COND_ENCODER)
    has_native_encoder = _any_startswith(entries, _NATIVE_ENCODER)
    if not (has_conditioning_encoder or has_native_encoder):
        raise CheckpointError(f"{label} has no VAE encoder: neither {_COND_ENCODER}* nor {_NATIVE_ENCODER}*. SF-V needs one to encode the start image.")
    unet = _empty(models.build_unet, configs.unet)
    vae = _empty(models.build_vae, configs.vae)
    image_encoder = _empty(models.build_image_encoder, configs.image_encoder)
    notes = []
    if has_conditioning_encoder:
        vae_part = _Part(vae, convert.vae_keymap(configs.vae, vae.state_dict().keys()))
    else:
        vae_keymap = convert.vae_keymap(configs.vae, vae.state_dict().keys(), encoder_root=FIRST_STAGE_ROOT)
        vae_part = _Part(vae, vae_keymap, provided=_identity_quant_conv(configs.vae))
        notes.append(f"no conditioning encoder ({CONDITIONING_ENCODER_ROOT}*) in the file: the VAE encoder is {_NATIVE_ENCODER}* with an identity quant_conv")
    if not has_native_encoder:
        notes.append(f"no {_NATIVE_ENCODER}* in the file: the native path shares the conditioning encoder")
    native_part = None
    if has_conditioning_encoder and has_native_encoder:
        native = _empty(models.build_native_encoder, configs.vae)
        native_part = _Part(native, convert.native_encoder_keymap(configs.vae, native.state_dict().keys()))
    parts = [
        _Part(unet, convert.unet_keymap(configs.unet, unet.state_dict().keys())),
        vae_part,
        _Part(image_encoder, convert.image_encoder_keymap(configs.image_encoder, image_encoder.state_dict().keys())),
    ]
    return parts, native_part, notes


def _load_single_file(weights: Weights, dtype: torch.dtype, device) -> SVDModel:
    parts, native_part, notes = _single_file_parts(weights.entries, infer_configs(weights.entries), weights.label)
    _check(parts + ([native_part] if native_part else []), weights, _SINGLE_FILE_ROOTS, "an SVD model of the architecture read from its shapes")
    native_encoder = None
    with weights.reader() as get:
        unet, vae, image_encoder = (_fill(part, _read_state(part, get, dtype, device), device) for part in parts)
        if native_part is not None:
            native_state = _read_state(native_part, get, dtype, device)
            shared = vae.encoder.state_dict()
            if any(not torch.equal(tensor, shared[key]) for key, tensor in native_state.items()):
                native_encoder = _fill(native_part, native_state, device)
                notes.append(f"{_NATIVE_ENCODER}* differs from the conditioning encoder: kept as native_encoder (ComfyUI's native path encodes with it)")
    notes += _ignored_note(weights.entries, _SINGLE_FILE_ROOTS)
    return SVDModel(unet=unet, vae=vae, image_encoder=image_encoder, native_encoder=native_encoder, source=weights.label, notes=notes).eval_frozen()


# ---------------------------------------------------------------------------------------------
# The diffusers folder


def _part_weights(folder: Path, stem: str) -> Weights:
    """A part's safetensors: plain, fp16 variant, or sharded with an index."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).is_file():
            return read_safetensors_header(folder / name)
    for name in (f"{stem}.safetensors.index.json", f"{stem}.fp16.safetensors.index.json"):
        if (folder / name).is_file():
            return _read_sharded(folder / name)
    for found in sorted(folder.iterdir()):
        if found.name.startswith(stem) and found.suffix in PICKLE_SUFFIXES:
            _refuse_pickle(found)
    raise CheckpointError(f"{folder} has no {stem}.safetensors (or .fp16.safetensors); it holds: {_examples(p.name for p in folder.iterdir())}.")


def _part_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: each part of a diffusers folder needs its config.json.") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}).") from error


def _constructor_args(cls, config: Mapping) -> dict:
    """The entries of a saved diffusers config that `cls` takes (drops _class_name etc.)."""
    saved_class = config.get("_class_name", cls.__name__)
    if saved_class != cls.__name__:  # e.g. an image model's UNet2DConditionModel
        raise CheckpointError(f"the config says {saved_class}, expected {cls.__name__} (an SVD-family model).")
    accepted = inspect.signature(cls.__init__).parameters
    return {key: value for key, value in config.items() if key in accepted}


def _clip_args(config: Mapping) -> dict:
    # Bookkeeping of transformers' saved configs; a saved dtype would also change the build dtype.
    dropped = {"architectures", "model_type", "transformers_version", "torch_dtype", "dtype"}
    return {key: value for key, value in config.items() if key not in dropped and not key.startswith("_")}


def _folder_configs(folder: Path) -> dict[str, dict]:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    try:
        return {
            "unet": _constructor_args(UNetSpatioTemporalConditionModel, _part_config(folder / "unet")),
            "vae": _constructor_args(AutoencoderKLTemporalDecoder, _part_config(folder / "vae")),
            "image_encoder": _clip_args(_part_config(folder / "image_encoder")),
        }
    except CheckpointError as error:
        raise CheckpointError(f"{folder}: {error}") from None


def _check_folder(folder: Path) -> None:
    missing = [name for name in _DIFFUSERS_PARTS if not (folder / name).is_dir()]
    if not missing:
        return
    if (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} looks like one part of a diffusers folder; pass the folder that holds unet/, vae/ and image_encoder/.")
    found = _examples(p.name for p in folder.iterdir()) or "nothing"
    raise CheckpointError(f"{folder} is not a complete diffusers SVD folder: missing {', '.join(missing)}/ (expected unet/, vae/, image_encoder/; found {found}).")


def _load_folder(folder: Path, dtype: torch.dtype, device) -> SVDModel:
    _check_folder(folder)
    configs = _folder_configs(folder)
    builds = {
        "unet": (models.build_unet, configs["unet"]),
        "vae": (models.build_vae, configs["vae"]),
        "image_encoder": (models.build_image_encoder, configs["image_encoder"]),
    }
    if (folder / _NATIVE_ENCODER_FOLDER).is_dir():
        builds[_NATIVE_ENCODER_FOLDER] = (models.build_native_encoder, configs["vae"])
    loaded = {}
    for name, (build, config) in builds.items():
        weights = _part_weights(folder / name, _DIFFUSERS_PARTS.get(name, "diffusion_pytorch_model"))
        module = _empty(build, config)
        part = _Part(module, convert.identity_keymap(module.state_dict().keys()))
        _check([part], weights, ("",), f"the {name} its config describes")
        _load_parts([part], weights, dtype, device)
        loaded[name] = module
    return SVDModel(**loaded, source=str(folder)).eval_frozen()


# ---------------------------------------------------------------------------------------------
# Public API: reading


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, read from headers and config files only (cheap)."""

    path: str
    kind: str  # "svd_single_file" | "diffusers_folder" | "sfv_unet"
    layout: str  # "sgm" (Stability's names) | "diffusers"
    tensor_count: int
    parameter_count: int  # elements over all tensors
    dtypes: dict[str, int]  # torch dtype name -> number of tensors
    unet_config: dict
    vae_config: dict | None = None
    image_encoder_config: dict | None = None
    encoders: tuple[str, ...] = ()  # VAE encoders of a single file: "conditioning", "first_stage"
    ignored_keys: tuple[str, ...] = ()

    @property
    def dtype(self) -> str:
        """The most common tensor dtype."""
        return max(self.dtypes, key=self.dtypes.get)


def _summary(weights: list[Weights]) -> dict:
    entries = [entry for w in weights for entry in w.entries.values()]
    return dict(
        tensor_count=len(entries),
        parameter_count=sum(math.prod(entry.shape) for entry in entries),
        dtypes=dict(Counter(str(entry.dtype).removeprefix("torch.") for entry in entries)),
    )


def _infer_unet(weights: Weights, layout: str, root: str) -> dict:
    return infer_unet_config_sgm(weights.entries, root) if layout == "sgm" else infer_unet_config_diffusers(weights.entries)


def inspect_checkpoint(path) -> CheckpointInfo:
    """Kind, size, dtypes and model configs of a single file, diffusers folder or SF-V UNet file."""
    path = _existing_path(path)
    if path.is_dir():
        _check_folder(path)
        configs = _folder_configs(path)
        parts = [_part_weights(path / name, stem) for name, stem in _DIFFUSERS_PARTS.items()]
        return CheckpointInfo(str(path), "diffusers_folder", "diffusers", **_summary(parts), unet_config=configs["unet"],
                              vae_config=configs["vae"], image_encoder_config=configs["image_encoder"])
    weights = read_safetensors_header(path)
    kind, layout, root = detect(weights.entries, weights.label)
    if kind == "sfv_unet":
        return CheckpointInfo(str(path), kind, layout, **_summary([weights]), unet_config=_infer_unet(weights, layout, root),
                              ignored_keys=tuple(sorted(k for k in weights.entries if not k.startswith(root))))
    configs = infer_configs(weights.entries)
    encoders = tuple(name for name, prefix in (("conditioning", _COND_ENCODER), ("first_stage", _NATIVE_ENCODER)) if _any_startswith(weights.entries, prefix))
    return CheckpointInfo(str(path), kind, layout, **_summary([weights]), unet_config=configs.unet, vae_config=configs.vae,
                          image_encoder_config=configs.image_encoder, encoders=encoders,
                          ignored_keys=tuple(sorted(k for k in weights.entries if not k.startswith(_SINGLE_FILE_ROOTS))))


def load_model(path, dtype: torch.dtype = torch.float32, device="cpu") -> SVDModel:
    """An SVD-family model from a single file or a diffusers folder, in `dtype` on `device`,
    in eval mode with gradients off."""
    path = _existing_path(path)
    if path.is_dir():
        return _load_folder(path, dtype, device)
    weights = read_safetensors_header(path)
    kind, _, _ = detect(weights.entries, weights.label)
    if kind == "sfv_unet":
        raise CheckpointError(
            f"{path} holds only a UNet (SF-V weights?), not a full model. Load the base SVD checkpoint with load_model(), "
            f"then this file with load_sfv_unet(path, base) (in ComfyUI: the SF-V UNet input of the loader)."
        )
    return _load_single_file(weights, dtype, device)


_ARCHITECTURE_FIELDS = (
    "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
    "cross_attention_dim", "transformer_layers_per_block", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
)


def _architecture(config: Mapping) -> dict:
    """The config fields that decide tensor shapes, in one comparable form."""
    def plain(value):
        return tuple(plain(v) for v in value) if isinstance(value, (list, tuple)) else value

    out = {field: plain(config.get(field)) for field in _ARCHITECTURE_FIELDS}
    if isinstance(out["transformer_layers_per_block"], int):
        out["transformer_layers_per_block"] = (out["transformer_layers_per_block"],) * len(out["block_out_channels"])
    return out


def load_sfv_unet(path, base: SVDModel, dtype: torch.dtype | None = None, device=None) -> SVDModel:
    """`base` with its UNet replaced by the UNet in `path` (diffusers or SGM names, with or
    without the `model.diffusion_model.` prefix; a full single file also works). The new UNet
    must have the base UNet's architecture. `base` itself is left unchanged."""
    weights = read_safetensors_header(path)
    _, layout, root = detect(weights.entries, weights.label)
    found, expected = _architecture(_infer_unet(weights, layout, root)), _architecture(base.unet.config)
    differences = [f"{field}: file {found[field]}, base {expected[field]}" for field in _ARCHITECTURE_FIELDS if found[field] != expected[field]]
    if differences:
        raise CheckpointError(
            f"{weights.label} is a UNet of a different architecture than the base model ({base.source}): "
            + "; ".join(differences) + ". SF-V weights replace the UNet of the SVD model they were trained from."
        )
    base_parameter = next(base.unet.parameters())
    dtype = dtype or base_parameter.dtype
    device = device or base_parameter.device
    # Built from the base's own config: head counts are not visible in the file's shapes.
    unet = _empty(models.build_unet, _constructor_args(type(base.unet), base.unet.config))
    keys = unet.state_dict().keys()
    keymap = convert.unet_keymap(unet.config, keys, root) if layout == "sgm" else convert.identity_keymap(keys)
    part = _Part(unet, keymap)
    _check([part], weights, (root,), "the base model's UNet")
    _load_parts([part], weights, dtype, device)
    notes = [*base.notes, f"UNet from {weights.label}", *_ignored_note(weights.entries, (root,))]
    return dataclasses.replace(base, unet=unet, source=f"{base.source} + UNet {weights.label}", notes=notes).eval_frozen()


# ---------------------------------------------------------------------------------------------
# Writing. Every file is written to a temporary name in its folder, then renamed over the
# target, so a crash never leaves a half-written file under the real name.


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    with atomic_path(path) as temporary:
        write(str(temporary))
    return path


def _write_safetensors(path, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: write weights to a .safetensors path.")
    ready = {key: _cast(tensor.detach(), dtype or tensor.dtype, "cpu").contiguous() for key, tensor in tensors.items()}
    return _atomic_write(path, lambda temporary: save_file(ready, temporary, metadata={"format": "pt"}))


def _write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, lambda temporary: Path(temporary).write_text(text))


def model_to_single_file_state_dict(model: SVDModel) -> dict[str, torch.Tensor]:
    """The original single-file layout of `model` (what `load_model` reads back).

    first_stage_model.encoder is the native encoder when the model has one, else a copy of
    the VAE's encoder; conditioner.embedders.3 holds the VAE's encoder and quant_conv.
    """
    unet, vae, clip = (module.state_dict() for module in (model.unet, model.vae, model.image_encoder))
    native = model.native_encoder.state_dict() if model.native_encoder is not None else {
        # A copy: safetensors refuses two names for one storage.
        key.removeprefix("encoder."): tensor.clone() for key, tensor in vae.items() if key.startswith("encoder.")
    }
    out = convert.to_original(convert.unet_keymap(model.unet.config, unet.keys()), unet)
    out |= convert.to_original(convert.vae_keymap(model.vae.config, vae.keys()), vae)
    out |= convert.to_original(convert.native_encoder_keymap(model.vae.config, native.keys()), native)
    out |= convert.to_original(convert.image_encoder_keymap(model.image_encoder.config.to_dict(), clip.keys()), clip)
    return out


def save_single_file(model: SVDModel, path, dtype: torch.dtype | None = None) -> Path:
    """Write `model` as one original-layout .safetensors file (ComfyUI's checkpoint loaders
    read it); floating tensors cast to `dtype` when given. Returns the path."""
    return _write_safetensors(path, model_to_single_file_state_dict(model), dtype)


def save_unet_file(unet: torch.nn.Module, path, layout: str = "diffusers", dtype: torch.dtype | None = None) -> Path:
    """Write a UNet alone (an SF-V result): diffusers names, or SGM names without a prefix
    (the form ComfyUI's Load Diffusion Model reads from models/diffusion_models)."""
    state = unet.state_dict()
    if layout == "sgm":
        state = convert.to_original(convert.unet_keymap(unet.config, state.keys(), root=""), state)
    elif layout != "diffusers":
        raise ValueError(f"layout must be 'diffusers' or 'sgm', got {layout!r}")
    return _write_safetensors(path, state, dtype)


def _pipeline_extras(model: SVDModel) -> dict[str, str]:
    """model_index.json, scheduler and feature extractor configs, so that diffusers'
    StableVideoDiffusionPipeline.from_pretrained opens the folder too (SVD's own values)."""
    from diffusers import EulerDiscreteScheduler

    from .conditioning import CLIP_MEAN, CLIP_STD
    from .sampling import SIGMA_MAX, SIGMA_MIN

    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
        sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, timestep_spacing="leading", timestep_type="continuous", steps_offset=1,
    )
    size = model.image_encoder.config.image_size
    processor = {  # CLIPImageProcessor's saved form (written as data: its class may need torchvision)
        "image_processor_type": "CLIPImageProcessor", "feature_extractor_type": "CLIPFeatureExtractor",
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": size, "width": size}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "do_convert_rgb": True,
    }
    index = {
        "_class_name": "StableVideoDiffusionPipeline",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
    }
    return {
        "model_index.json": json.dumps(index, indent=2),
        "scheduler/scheduler_config.json": scheduler.to_json_string(),
        "feature_extractor/preprocessor_config.json": json.dumps(processor, indent=2),
    }


def save_diffusers_folder(model: SVDModel, path, dtype: torch.dtype | None = None) -> Path:
    """Write `model` as a diffusers folder (configs + safetensors per part, plus the pipeline
    files). A native encoder that differs from the VAE's goes to `native_encoder/`, which
    diffusers ignores and `load_model` reads back. Returns the folder."""
    folder = Path(path)
    _write_text(folder / "unet" / "config.json", model.unet.to_json_string())
    _write_safetensors(folder / "unet" / "diffusion_pytorch_model.safetensors", model.unet.state_dict(), dtype)
    _write_text(folder / "vae" / "config.json", model.vae.to_json_string())
    _write_safetensors(folder / "vae" / "diffusion_pytorch_model.safetensors", model.vae.state_dict(), dtype)
    _write_text(folder / "image_encoder" / "config.json", model.image_encoder.config.to_json_string())
    _write_safetensors(folder / "image_encoder" / "model.safetensors", model.image_encoder.state_dict(), dtype)
    native_file = folder / _NATIVE_ENCODER_FOLDER / "diffusion_pytorch_model.safetensors"
    if model.native_encoder is not None:
        _write_safetensors(native_file, model.native_encoder.state_dict(), dtype)
    else:
        native_file.unlink(missing_ok=True)  # a stale one from an earlier save would be loaded back
    for name, text in _pipeline_extras(model).items():
        _write_text(folder / name, text)
    return folder
