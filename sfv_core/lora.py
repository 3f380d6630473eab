"""LoRA for the SVD UNet: the delta math, the file, strict reading, merging, extraction.

A layer's LoRA is two factors and a scale: delta W = up @ down * alpha / rank * strength,
written once in `lora_delta` (ComfyUI's math: mm(up.flatten(1), down.flatten(1)) reshaped to
the weight, scaled in float32). Layers are named by OUR UNet's module names (diffusers'
UNetSpatioTemporalConditionModel, the names PEFT sees); the file holds them under the names
ComfyUI's LoRA loader maps for an SVD MODEL loaded from svd.safetensors.

The file form written: `diffusion_model.<SGM module>.lora_down.weight`, `.lora_up.weight`,
`.alpha`. ComfyUI maps `diffusion_model.<module>` (its "Comfy" form, since August 2024; what
its own LoraSave node writes) and `lora_unet_<module with dots as _>` (kohya)
for every weight of the model; of the diffusers names it maps only the spatial layers of an
SVD UNet (comfy.utils.unet_to_diffusers knows no temporal layers), so a file in diffusers names
would lose its temporal layers there. The dotted form is written because it names the module
exactly (underscores are ambiguous to read back); both SGM forms are read.

No PEFT here (it is the trainer's extra): its adapters' lora_A / lora_B become `LoraLayer`s by
name (`peft_layers`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import convert, limits
from .checkpoints.headers import Weights, read_safetensors_header
from .checkpoints.loading import CheckpointInfo, _constructor_args
from .checkpoints.strict import _empty, _listing, _own, names_the_damage
from .checkpoints.writing import _write_safetensors, _write_text
from .errors import CheckpointError
from .models import SVDModel, build_unet

log = logging.getLogger("sfv")

ROOT = "diffusion_model."  # the UNet's root in ComfyUI's model state dict
KOHYA_ROOT = "lora_unet_"
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
FORMAT_KEY, FORMAT_VERSION = "sfv_lora", "1"  # metadata marker of files written here
_MADE_FOR = (
    "SF-V loads LoRAs made for SVD img2vid's UNet (the trainer's LoRA export, extract-lora, or ComfyUI's LoraSave on an SVD model); "
    "a LoRA of an image model (SD1.5, SDXL) or of another video model cannot be applied to it."
)


@dataclass(frozen=True)
class LoraLayer:
    """One layer's LoRA (PEFT's lora_A = down, lora_B = up)."""

    down: torch.Tensor  # [rank, in] or conv [rank, in, *kernel]
    up: torch.Tensor  # [out, rank] or conv [out, rank, 1, ...]
    alpha: float  # delta W = up @ down * alpha / rank * strength

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def lora_delta(layer: LoraLayer, weight_shape, strength: float = 1.0) -> torch.Tensor:
    """The float32 change `layer` makes to a weight of `weight_shape`, as ComfyUI computes it:
    the scale (strength * alpha / rank) first, then times mm(up, down) reshaped to the weight."""
    scale = strength * (layer.alpha / layer.rank)
    product = torch.mm(layer.up.flatten(1).float(), layer.down.flatten(1).float())
    return (scale * product).reshape(weight_shape)


# --- which layers a LoRA can change, and their names in a file ------------------------------


@dataclass(frozen=True)
class Target:
    """A UNet weight a LoRA can change: a matrix or a convolution kernel."""

    module: str  # our module name
    original: str  # its SGM module name (no root)
    shape: tuple[int, ...]  # our weight's shape
    original_shape: tuple[int, ...]  # the single file's


def lora_targets(unet_config: Mapping, weight_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Target]:
    """Every weight of a UNet with this config and these shapes (our keys) that a LoRA can change."""
    keys = [key for key, shape in weight_shapes.items() if key.endswith(".weight") and len(shape) >= 2]
    keymap = convert.unet_keymap(unet_config, keys, root="")
    targets = {}
    for key, source in keymap.items():
        shape = tuple(weight_shapes[key])
        targets[key.removesuffix(".weight")] = Target(key.removesuffix(".weight"), source.key.removesuffix(".weight"), shape, convert.original_shapes(source, shape)[0])
    return targets


def unet_targets(unet: torch.nn.Module) -> dict[str, Target]:
    return lora_targets(unet.config, {key: tuple(tensor.shape) for key, tensor in unet.state_dict().items()})


def config_targets(unet_config: Mapping) -> dict[str, Target]:
    """The targets of a UNet known only by its config (built on the meta device: no memory)."""
    from diffusers import UNetSpatioTemporalConditionModel

    return unet_targets(_empty(build_unet, _constructor_args(UNetSpatioTemporalConditionModel, unet_config)))


def _file_names(targets: Mapping[str, Target]) -> dict[str, str]:
    """Module name in a file (both SGM forms ComfyUI maps) -> our module name."""
    names = {}
    for target in targets.values():
        names[ROOT + target.original] = target.module
        names[KOHYA_ROOT + target.original.replace(".", "_")] = target.module
    return names


def _factor_shapes(target: Target, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(down, up) shapes in the file: the original weight's layout (a conv's up is 1x1...)."""
    out, *rest = target.original_shape
    return (rank, *rest), (out, rank, *(1,) * len(rest[1:]))


def _fit_problem(target: Target, down: tuple[int, ...], up: tuple[int, ...]) -> str | None:
    """Why factors of these shapes cannot change `target`'s weight (None: they can). Any shape
    ComfyUI's flatten-and-reshape applies is accepted: the file's layout or ours."""
    out, inputs = target.original_shape[0], target.original_shape[1]
    if len(down) < 2 or len(up) < 2:
        return f"lora_down {list(down)} / lora_up {list(up)}: factors need 2 or more dimensions"
    rank = down[0]
    if rank < 1:
        return f"lora_down {list(down)} has rank 0"
    if up[1] != rank:
        return f"lora_down {list(down)} has rank {rank} but lora_up {list(up)} has rank {up[1]}"
    if down[1] != inputs:
        return f"lora_down {list(down)} takes {down[1]} input features, the layer {list(target.original_shape)} takes {inputs}"
    if math.prod(down[1:]) != math.prod(target.original_shape[1:]):
        return f"lora_down {list(down)} does not fit the layer's kernel {list(target.original_shape)}"
    if up[0] != out or math.prod(up[2:]) != 1:
        return f"lora_up {list(up)} gives {up[0]} output features, the layer {list(target.original_shape)} has {out}"
    return None


def _check_layers(layers: Mapping[str, LoraLayer], targets: Mapping[str, Target]) -> None:
    """Layers handed in by code (the trainer's export, a merge): a misfit is a bug there, a ValueError."""
    unknown = sorted(set(layers) - set(targets))
    misfits = [f"{name}: {problem}" for name, layer in layers.items() if name in targets
               for problem in [_fit_problem(targets[name], tuple(layer.down.shape), tuple(layer.up.shape))] if problem]
    if unknown or misfits or not layers:
        raise ValueError("LoRA layers that this UNet cannot take" + (_listing("names that are no matrix or conv weight of the UNet", unknown) if unknown else "")
                         + (_listing("layers whose factors do not fit", misfits) if misfits else "") + ("" if layers else ": no layers at all"))


_PEFT_PREFIXES = ("base_model.model.", "unet.")
_PEFT_FACTOR = {"lora_A": "down", "lora_B": "up"}


def peft_layers(state: Mapping[str, torch.Tensor], alpha: float | Mapping[str, float]) -> dict[str, LoraLayer]:
    """`LoraLayer`s from a PEFT / diffusers adapter state dict (`<module>.lora_A[.<adapter>].weight`,
    with or without a `base_model.model.` or `unet.` prefix). `alpha`: PEFT's lora_alpha, one
    for all layers or per module name (rsLoRA's lora_alpha / sqrt(r) scale is alpha * sqrt(r) here)."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        found = [index for index, part in enumerate(parts) if part in _PEFT_FACTOR]
        if not found or parts[-1] != "weight":
            raise ValueError(f"{key!r} is not a PEFT LoRA factor (<module>.lora_A/lora_B[.<adapter>].weight)")
        module = ".".join(parts[: found[-1]])
        for prefix in _PEFT_PREFIXES:
            module = module.removeprefix(prefix)
        factors.setdefault(module, {})[_PEFT_FACTOR[parts[found[-1]]]] = tensor
    incomplete = sorted(module for module, pair in factors.items() if len(pair) != 2)
    if incomplete:
        raise ValueError("PEFT modules with only one of lora_A / lora_B" + _listing("modules", incomplete))
    return {module: LoraLayer(pair["down"], pair["up"], float(alpha[module] if isinstance(alpha, Mapping) else alpha))
            for module, pair in factors.items()}


# --- writing --------------------------------------------------------------------------------


def _uniform(values) -> str:
    values = sorted(set(values))
    return f"{values[0]:g}" if len(values) == 1 else "mixed"


def save_lora(path, layers: Mapping[str, LoraLayer], unet_config: Mapping, metadata: Mapping[str, str] | None = None,
              dtype: torch.dtype | None = None) -> Path:
    """Write `layers` (keys: our module names) as one LoRA file that ComfyUI's LoRA loader applies
    to an SVD model loaded from svd.safetensors, and that `read_lora` reads back. Factors are cast
    to `dtype` when given; alpha stays float32 (ComfyUI reads it as a number). Written atomically."""
    targets = config_targets(unet_config)
    _check_layers(layers, targets)
    reserved = {FORMAT_KEY, "rank", "alpha", "targets", "format"} & set(metadata or {})
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are written by save_lora itself")
    tensors = {}
    for name, layer in sorted(layers.items()):
        target = targets[name]
        down_shape, up_shape = _factor_shapes(target, layer.rank)
        factors = {DOWN: layer.down.reshape(down_shape), UP: layer.up.reshape(up_shape)}
        for suffix, tensor in factors.items():
            tensors[ROOT + target.original + suffix] = tensor.detach().to("cpu", dtype or tensor.dtype)
        tensors[ROOT + target.original + ALPHA] = torch.tensor(float(layer.alpha), dtype=torch.float32)
    info = {FORMAT_KEY: FORMAT_VERSION, "rank": _uniform(layer.rank for layer in layers.values()),
            "alpha": _uniform(layer.alpha for layer in layers.values()), "targets": json.dumps(sorted(layers))}
    return _write_safetensors(path, tensors, metadata=info | dict(metadata or {}))


# --- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LayerKeys:
    down: str
    up: str
    alpha: str | None


def _lora_base(key: str) -> tuple[str, str] | None:
    """(module name in the file, part) of a LoRA key; None for any other key."""
    for suffix in (DOWN, UP, ALPHA):
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


def _dotted_prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def _cross_attention_widths(weights: Weights) -> set[int]:
    """Context widths the file's cross-attention key/value factors take (attn2.to_k / to_v)."""
    widths = set()
    for key, entry in weights.entries.items():
        if key.endswith(DOWN) and len(entry.shape) >= 2 and any(part in key for part in ("attn2.to_k", "attn2_to_k", "attn2.to_v", "attn2_to_v")):
            widths.add(entry.shape[1])
    return widths


_FAMILIES = {768: "SD1.x's text encoder", 1024: "SD2.x's text encoder or SVD's image embedding", 2048: "SDXL's two text encoders", 4096: "a T5 text encoder"}


def _what_it_targets(weights: Weights, unet_config: Mapping) -> list[str]:
    """What a refused file was made for, as far as its key names and shapes tell."""
    keys = list(weights.entries)
    starts = lambda *prefixes: any(key.startswith(prefixes) for key in keys)  # noqa: E731
    found = []
    if starts("lora_te1_", "lora_te2_", "text_encoder_2.", "text_encoders.clip_g"):
        found.append("the two text encoders of an SDXL model (lora_te1_/lora_te2_ keys)")
    elif starts("lora_te_", "text_encoder.", "text_encoders.", "te."):
        found.append("the text encoder of an image model such as SD1.5 (lora_te_ keys); SVD has no text encoder")
    if starts("lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_", "unet.", "down_blocks.", "up_blocks.", "mid_block.", "base_model.model."):
        found.append("UNet layers under diffusers names (the kohya/diffusers form of image-model LoRAs such as SD1.5 and SDXL), not SVD's original names "
                     "(an SVD LoRA in PEFT names converts with sfv_core.lora.peft_layers and save_lora)")
    if starts("transformer.", "lora_transformer_", "diffusion_model.blocks.", "diffusion_model.double_blocks.", "diffusion_model.joint_blocks."):
        found.append("a transformer model (Flux, SD3, Wan, ...), not SVD's UNet")
    expected = unet_config.get("cross_attention_dim")
    for width in sorted(_cross_attention_widths(weights) - {expected}):
        found.append(f"cross-attention taking {width}-wide context ({_FAMILIES.get(width, 'another model')}), where this SVD UNet takes {expected} (its CLIP image embedding)")
    return found


def _refusal(weights: Weights, unet_config: Mapping, listings: list[tuple[str, list[str]]]) -> CheckpointError:
    targets = _what_it_targets(weights, unet_config)
    message = f"{weights.label} is not a LoRA for this SVD UNet" + (": it targets " + "; ".join(targets) if targets else "") + "."
    for title, names in listings:
        if names:
            message += _listing(title, sorted(names))
    return CheckpointError(f"{message}\n{_MADE_FOR}")


def _plan(weights: Weights, targets: Mapping[str, Target], unet_config: Mapping) -> dict[str, _LayerKeys]:
    """Our module name -> the file's keys of its LoRA, decided from the header alone; every key
    of the file must be used and every shape must fit, else the refusal names what is wrong."""
    if not any("lora" in key.lower() for key in weights.entries):
        raise CheckpointError(
            f"{weights.label} is not a LoRA: its {len(weights.entries)} tensors hold no lora_down / lora_up factors (full weights?). "
            "An SF-V UNet goes in the loader's sfv_unet (--sfv-unet), an SVD checkpoint in checkpoint (--checkpoint)."
        )
    names = _file_names(targets)
    parts: dict[str, dict[str, str]] = {}  # our module -> part suffix -> file key
    no_layer, unknown_parts, twice, misfits, not_float = [], [], [], [], []
    for key, entry in weights.entries.items():
        base = _lora_base(key)
        if base is None:
            (unknown_parts if any(prefix in names for prefix in _dotted_prefixes(key)) else no_layer).append(key)
            continue
        if base[0] not in names:
            no_layer.append(key)
            continue
        if not entry.dtype.is_floating_point:
            not_float.append(f"{key}: {str(entry.dtype).removeprefix('torch.')}")
        module_parts = parts.setdefault(names[base[0]], {})
        if base[1] in module_parts:
            twice.append(f"{names[base[0]]}: {module_parts[base[1]]} and {key}")
        module_parts[base[1]] = key
    plan = {}
    for module, found in parts.items():
        if DOWN not in found or UP not in found:
            misfits.append(f"{next(iter(found.values()))}: its layer has no {'lora_down' if DOWN not in found else 'lora_up'} factor")
            continue
        down, up = weights.entries[found[DOWN]], weights.entries[found[UP]]
        problem = _fit_problem(targets[module], down.shape, up.shape)
        alpha = found.get(ALPHA)
        if problem is None and alpha is not None and math.prod(weights.entries[alpha].shape) != 1:
            problem = f"alpha has shape {list(weights.entries[alpha].shape)}, expected one number"
        if problem:
            misfits.append(f"{found[DOWN].removesuffix(DOWN)}: {problem}")
        plan[module] = _LayerKeys(found[DOWN], found[UP], alpha)
    listings = [
        ("keys naming no layer of this UNet", no_layer),
        ("parts SF-V does not apply (only lora_down, lora_up and alpha: no DoRA, LoCon mid, LoHa/LoKr or full diffs)", unknown_parts),
        ("layers given twice (in both name forms)", twice),
        ("layers whose factors do not fit", misfits),
        ("factors stored as integers", not_float),
    ]
    if any(listed for _, listed in listings):
        raise _refusal(weights, unet_config, listings)
    return plan


def _lora_header(path) -> Weights:
    if not Path(path).expanduser().exists():
        raise CheckpointError(f"LoRA file {path} does not exist: check the path (for ComfyUI, LoRAs go in models/loras or models/sfv).")
    return read_safetensors_header(path)


@names_the_damage
def check_lora(path, base: CheckpointInfo) -> list[str]:
    """What read_lora checks, from headers only, against the base checkpoint's UNet: usable
    before any model loads. Returns the names of the layers the LoRA changes."""
    weights = _lora_header(path)
    return sorted(_plan(weights, config_targets(base.unet_config), base.unet_config))


@names_the_damage
def read_lora(path, unet: torch.nn.Module) -> dict[str, LoraLayer]:
    """The layers of a LoRA file for `unet` (our module names, factors float32 in our layout),
    checked strictly: every key used, every shape fitting, every number finite."""
    weights = _lora_header(path)
    targets = unet_targets(unet)
    plan = _plan(weights, targets, unet.config)
    layers = {}
    with weights.reader() as get:
        def read(key: str) -> torch.Tensor:
            view, owned = get(key, torch.float32)
            tensor = _own(view, torch.float32, "cpu", owned)
            if not torch.isfinite(tensor).all():
                raise CheckpointError(f"{weights.label} holds NaN or infinite values in {key}: the file is damaged; download or export it again.")
            return tensor

        for module, keys in plan.items():
            shape = targets[module].shape
            down, up = read(keys.down), read(keys.up)
            rank = down.shape[0]
            alpha = float(read(keys.alpha).reshape(())) if keys.alpha else float(rank)  # no alpha: scale 1, as in ComfyUI
            layers[module] = LoraLayer(down.reshape(rank, *shape[1:]), up.reshape(shape[0], rank, *(1,) * (len(shape) - 2)), alpha)
    if not any(_temporal(module) for module in layers):
        # SD2.x has SVD's spatial names and shapes, so an SD2.x LoRA fits them; nothing in the file tells it apart.
        log.warning("%s changes no temporal layer of the UNet: if it was made for an image model (SD2.x has the same spatial layers), "
                    "it will not make SF-V video", weights.label)
    return layers


def _temporal(module: str) -> bool:
    return any(part in module for part in ("temporal_transformer_blocks", "temporal_res_block", "time_pos_embed", "time_mixer"))


# --- merging --------------------------------------------------------------------------------


@torch.no_grad()
def merge_lora(unet: torch.nn.Module, layers: Mapping[str, LoraLayer], strength: float = 1.0) -> None:
    """Add each layer's delta into `unet`'s weights in place (computed in float32, then rounded
    to the weight's dtype, as ComfyUI patches): no per-step cost afterwards."""
    limits.LORA_STRENGTH.check(strength, "lora strength")
    _check_layers(layers, unet_targets(unet))
    for name, layer in layers.items():
        weight = unet.get_submodule(name).weight
        on_device = replace(layer, down=layer.down.to(weight.device), up=layer.up.to(weight.device))
        weight.copy_((weight.float() + lora_delta(on_device, weight.shape, strength)).to(weight.dtype))


def apply_lora_file(model: SVDModel, path, strength: float = 1.0) -> SVDModel:
    """`model` with the LoRA file at `path` merged into its UNet (in place) at `strength`."""
    limits.LORA_STRENGTH.check(strength, "lora strength")
    layers = read_lora(path, model.unet)
    merge_lora(model.unet, layers, strength)
    note = f"LoRA {path} merged at strength {strength:g} ({len(layers)} layers)"
    return replace(model, source=f"{model.source} + LoRA {path}", notes=[*model.notes, note])


# --- extraction -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerFit:
    """How well one extracted layer reproduces its weight change."""

    module: str
    shape: tuple[int, ...]
    rank: int
    delta_norm: float  # ||W_tuned - W_base||
    error_norm: float  # ||delta - up @ down||, with the factors as stored
    note: str = ""

    @property
    def relative_error(self) -> float:
        return self.error_norm / self.delta_norm


@dataclass
class ExtractionReport:
    rank: int
    layers: list[LayerFit] = field(default_factory=list)
    unchanged: int = 0  # matrix / conv weights with no change: skipped
    not_lora: list[str] = field(default_factory=list)  # changed tensors a LoRA cannot hold (biases, norms, ...)
    not_lora_norm: float = 0.0  # ||their changes||

    @property
    def relative_error(self) -> float:
        """Over all extracted layers: ||all errors|| / ||all changes||."""
        delta = math.sqrt(sum(fit.delta_norm**2 for fit in self.layers))
        return math.sqrt(sum(fit.error_norm**2 for fit in self.layers)) / delta if delta else 0.0

    def to_json(self) -> dict:
        return {
            "rank": self.rank, "relative_error": self.relative_error, "unchanged_layers_skipped": self.unchanged,
            "changed_tensors_not_in_lora": self.not_lora, "not_in_lora_delta_norm": self.not_lora_norm,
            "layers": [{"module": fit.module, "shape": list(fit.shape), "rank": fit.rank, "relative_error": fit.relative_error,
                        "delta_norm": fit.delta_norm, "note": fit.note} for fit in self.layers],
        }

    def table(self) -> str:
        width = max([len(fit.module) for fit in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'rank':>4}  relative error"]
        lines += [f"{fit.module:<{width}}  {fit.rank:>4}  {fit.relative_error:.3e}" + (f"  ({fit.note})" if fit.note else "") for fit in self.layers]
        lines.append(f"{'total':<{width}}  {self.rank:>4}  {self.relative_error:.3e}  ({len(self.layers)} layers; {self.unchanged} unchanged layers skipped)")
        if self.not_lora:
            lines.append(f"not in the LoRA: {len(self.not_lora)} changed tensors a LoRA cannot hold (biases, norms, ...), change norm {self.not_lora_norm:.3e}")
        return "\n".join(lines)


def _low_rank(delta: torch.Tensor, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of the best rank-`rank` approximation of the matrix `delta` (truncated SVD),
    the singular values split evenly between both so neither factor's range blows up in fp16."""
    left, singular, right = torch.linalg.svd(delta, full_matrices=False)
    root = singular[:rank].sqrt()
    return (left[:, :rank] * root).to(dtype), (root[:, None] * right[:rank]).to(dtype)


def extract_lora(base_unet_state: Mapping[str, torch.Tensor], tuned_unet_state: Mapping[str, torch.Tensor], rank: int,
                 dtype: torch.dtype = torch.float32) -> tuple[dict[str, LoraLayer], ExtractionReport]:
    """A LoRA of `rank` approximating tuned - base (our UNet state-dict keys) layer by layer with
    a truncated SVD; the report measures each layer's relative error with the factors rounded
    to `dtype`, as they will be stored. The states may read lazily (one tensor at a time)."""
    limits.LORA_RANK.check(rank, "rank")
    layers, report = {}, ExtractionReport(rank)
    not_lora_squares = 0.0
    for key in base_unet_state:
        base, tuned = base_unet_state[key].float(), tuned_unet_state[key].float()
        delta = tuned - base
        del base, tuned
        matrix_or_kernel = key.endswith(".weight") and delta.ndim >= 2
        if not delta.any():
            report.unchanged += int(matrix_or_kernel)
            continue
        if not matrix_or_kernel:
            report.not_lora.append(key)
            not_lora_squares += float(delta.norm()) ** 2
            continue
        matrix = delta.flatten(1)
        layer_rank = min(rank, *matrix.shape)
        up, down = _low_rank(matrix, layer_rank, dtype)
        if not (torch.isfinite(up).all() and torch.isfinite(down).all()):
            raise CheckpointError(f"{key}: the LoRA factors overflow {str(dtype).removeprefix('torch.')}; extract in bf16 or fp32.")
        layer = LoraLayer(down.reshape(layer_rank, *delta.shape[1:]), up.reshape(delta.shape[0], layer_rank, *(1,) * (delta.ndim - 2)), float(layer_rank))
        error = float((delta - lora_delta(layer, delta.shape)).norm())
        note = f"rank clipped to {layer_rank}, the layer's smaller side" if layer_rank < rank else ""
        module = key.removesuffix(".weight")
        layers[module] = layer
        report.layers.append(LayerFit(module, tuple(delta.shape), layer_rank, float(delta.norm()), error, note))
    report.not_lora_norm = math.sqrt(not_lora_squares)
    return layers, report


def report_path(lora_path) -> Path:
    """Where the extraction report of a LoRA file goes: NAME.extraction.json beside it."""
    return Path(lora_path).with_suffix(".extraction.json")


def write_report(report: ExtractionReport, lora_path) -> Path:
    return _write_text(report_path(lora_path), json.dumps(report.to_json(), indent=2))
