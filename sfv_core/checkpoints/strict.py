"""Strict loading: modules built on the meta device, every name and shape checked against the
header before any tensor is read, then tensors read one at a time into the target dtype."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable

import torch

from .. import convert
from ..errors import CheckpointError
from .headers import Weights
from .identify import _examples

_LIST_LIMIT = 20  # names listed per kind of mismatch in an error message


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
    missing, wrong_shape, wrong_dtype, consumed = [], [], [], set()
    for part in parts:
        expected = part.module.state_dict()
        shapes = {key: tuple(tensor.shape) for key, tensor in expected.items()}
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
            elif expected[our_key].is_floating_point() and not entry.dtype.is_floating_point:
                # Integers would be cast to floats silently: weights quantised or damaged, never SVD's.
                wrong_dtype.append(f"{source.key}: file {str(entry.dtype).removeprefix('torch.')}, expected a float dtype")
    unexpected = sorted(key for key in weights.entries if key.startswith(owned_roots) and key not in consumed)
    if missing or unexpected or wrong_shape or wrong_dtype:
        message = f"{weights.label} does not match {what}."
        listed = (("missing tensors", sorted(missing)), ("unexpected tensors", unexpected), ("tensors with the wrong shape", wrong_shape), ("float weights stored as integers", wrong_dtype))
        for title, names in listed:
            if names:
                message += _listing(title, names)
        raise CheckpointError(message + "\nThe file may be damaged or a variant this loader does not know.")


def _cast(tensor: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)


def _own(view: torch.Tensor, dtype: torch.dtype, device, may_alias: bool) -> torch.Tensor:
    """`view` as a contiguous tensor of its own in `dtype` on `device`: the read buffer itself
    where it may be kept (`may_alias`), else one copy, converting on the way."""
    target = dtype if view.is_floating_point() else view.dtype
    if may_alias and view.dtype == target and view.is_contiguous():
        return view.to(device)
    return torch.empty(view.shape, dtype=target, device=device).copy_(view)


def _read_state(part: _Part, get: Callable[[str, torch.dtype], tuple[torch.Tensor, bool]], dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Our state dict of `part`, each tensor read once and converted before the next is read."""
    read_map = part.read_map()
    state = {}
    for original_key, our_keys in convert.invert(read_map).items():
        tensor, owned = get(original_key, dtype)
        for our_key in our_keys:
            # The slots of a stacked tensor get a storage each (safetensors refuses to save shared ones).
            state[our_key] = _own(convert.from_original(read_map[our_key], tensor), dtype, device, owned and len(our_keys) == 1)
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


def _damage_errors() -> tuple[type[BaseException], ...]:
    """What shape inference and the constructors raise on configs no SVD model has."""
    errors = (ValueError, IndexError, TypeError, KeyError, AttributeError, ZeroDivisionError, AssertionError, RecursionError)
    try:  # diffusers / transformers validate configs with huggingface_hub's strict dataclasses
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return errors
    return (*errors, StrictDataclassError)


def names_the_damage(function):
    """A reader of checkpoint `path`: shapes or configs that describe no SVD-family model fail
    deep inside shape inference or a diffusers constructor, and unreadable files as OSErrors;
    each becomes a CheckpointError naming the file."""

    @functools.wraps(function)
    def read(path, *args, **kwargs):
        try:
            return function(path, *args, **kwargs)
        except CheckpointError as error:
            if str(path) in str(error):
                raise
            raise CheckpointError(f"{path}: {error}") from None
        except _damage_errors() as error:
            raise CheckpointError(
                f"{path} looks damaged: its tensor shapes or config describe no SVD-family model ({type(error).__name__}: {error}). Download or convert it again."
            ) from None
        except OSError as error:
            raise CheckpointError(f"cannot read {error.filename or path}: {error.strerror or error}; check that it is a readable file.") from None

    return read
