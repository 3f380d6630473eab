"""The formats read: the single file, the diffusers folder, an SF-V UNet file; and the public
reading API (inspect_checkpoint, load_model, load_sfv_unet)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import convert, models
from ..convert import CONDITIONING_ENCODER_ROOT, FIRST_STAGE_ROOT
from ..errors import CheckpointError
from ..models import SVDModel
from .headers import PICKLE_SUFFIXES, TensorEntry, Weights, _existing_path, _read_sharded, _refuse_pickle, read_safetensors_header
from .identify import _any_startswith, _examples, detect
from .layout import _COND_ENCODER, _DIFFUSERS_PARTS, _NATIVE_ENCODER, _NATIVE_ENCODER_FOLDER, _SINGLE_FILE_ROOTS
from .shapes import infer_configs, infer_unet_config_diffusers, infer_unet_config_sgm
from .strict import _check, _empty, _fill, _identity_quant_conv, _ignored_note, _load_parts, _own, _Part, _read_state, names_the_damage

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
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: each part of a diffusers folder needs its config.json.") from None
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not a config object: the folder is damaged.")
    return config


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


@names_the_damage
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


@names_the_damage
def load_model(path, dtype: torch.dtype = torch.float32, device="cpu") -> SVDModel:
    """An SVD-family model from a single file or a diffusers folder, in `dtype` on `device`,
    in eval mode with gradients off."""
    path = _existing_path(path)
    if path.is_dir():
        return _load_folder(path, dtype, device)
    weights = read_safetensors_header(path)
    kind, _, _ = detect(weights.entries, weights.label)
    _refuse_unet_only(path, kind)
    return _load_single_file(weights, dtype, device)


def _refuse_unet_only(path, kind: str) -> None:
    if kind == "sfv_unet":
        raise CheckpointError(
            f"{path} holds only a UNet (SF-V weights?), not a full model. Load the base SVD checkpoint with load_model(), "
            f"then this file with load_sfv_unet(path, base) (in ComfyUI: the SF-V UNet input of the loader)."
        )


def inspect_full_model(path) -> CheckpointInfo:
    """inspect_checkpoint for a file or folder that load_model must accept (headers only)."""
    info = inspect_checkpoint(path)
    _refuse_unet_only(info.path, info.kind)
    return info


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


def _unet_weights(path, base_unet_config: Mapping, base_label: str) -> tuple[Weights, str, str]:
    """The header of a UNet file (layout, root) after checking it has the base UNet's architecture."""
    weights = read_safetensors_header(path)
    _, layout, root = detect(weights.entries, weights.label)
    found, expected = _architecture(_infer_unet(weights, layout, root)), _architecture(base_unet_config)
    differences = [f"{field}: file {found[field]}, base {expected[field]}" for field in _ARCHITECTURE_FIELDS if found[field] != expected[field]]
    if differences:
        raise CheckpointError(
            f"{weights.label} is a UNet of a different architecture than the base model ({base_label}): "
            + "; ".join(differences) + ". SF-V weights replace the UNet of the SVD model they were trained from."
        )
    return weights, layout, root


def check_sfv_unet(path, base_unet_config: Mapping, base_label: str) -> None:
    """What load_sfv_unet checks first, from headers only (the base's config too, e.g.
    `inspect_full_model(...).unet_config`): before any weights are read."""
    _unet_weights(path, base_unet_config, base_label)


@names_the_damage
def load_sfv_unet(path, base: SVDModel, dtype: torch.dtype | None = None, device=None) -> SVDModel:
    """`base` with its UNet replaced by the UNet in `path` (diffusers or SGM names, with or
    without the `model.diffusion_model.` prefix; a full single file also works). The new UNet
    must have the base UNet's architecture. `base` itself is left unchanged."""
    weights, layout, root = _unet_weights(path, base.unet.config, base.source)
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


class _LazyState(Mapping):
    """A UNet state dict (our names) whose tensors are read from the file when asked for, as float32."""

    def __init__(self, keymap: convert.KeyMap, get: Callable[[str, torch.dtype], tuple[torch.Tensor, bool]]):
        self.keymap, self.get = keymap, get

    def __getitem__(self, key: str) -> torch.Tensor:
        source = self.keymap[key]
        view, owned = self.get(source.key, torch.float32)
        return _own(convert.from_original(source, view), torch.float32, "cpu", owned)

    def __iter__(self):
        return iter(self.keymap)

    def __len__(self) -> int:
        return len(self.keymap)


@contextmanager
def reading_unet_state(path, unet_config: Mapping, base_label: str) -> Iterator[Mapping[str, torch.Tensor]]:
    """The UNet of `path` (a single file, a diffusers folder, or an SF-V UNet file in either
    layout) as our state dict, checked from the header against `unet_config`'s architecture;
    each tensor is read (float32) only when asked for, so a walk over it holds one at a time."""
    from diffusers import UNetSpatioTemporalConditionModel

    path = _existing_path(path)
    if path.is_dir():
        _check_folder(path)
        weights, layout, root = _part_weights(path / "unet", _DIFFUSERS_PARTS["unet"]), "diffusers", ""
    else:
        weights, layout, root = _unet_weights(path, unet_config, base_label)
    unet = _empty(models.build_unet, _constructor_args(UNetSpatioTemporalConditionModel, unet_config))
    keys = unet.state_dict().keys()
    keymap = convert.unet_keymap(unet.config, keys, root) if layout == "sgm" else convert.identity_keymap(keys)
    _check([_Part(unet, keymap)], weights, (root,), f"the UNet of {base_label}")
    with weights.reader() as get:
        yield _LazyState(keymap, get)
