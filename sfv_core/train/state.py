"""The trainer's own resumable state (heads, EMA, progress) as safetensors + JSON, never a pickle.

accelerate's `register_for_checkpointing` stores such objects with torch.save and loads them
back with torch.load(weights_only=False), so a `custom_checkpoint_*.pkl` dropped into a run
folder would run code at the next resume. The trainer therefore registers nothing: each
object's state_dict is split here into its tensors (`trainer_state.safetensors`) and
everything else (`trainer_state.json`, tensors referenced by name).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError

TENSORS_FILE = "trainer_state.safetensors"
JSON_FILE = "trainer_state.json"
TENSOR_REF = "$tensor"


def _split(value, name: str, tensors: dict):
    """A nested state (dicts, lists, tensors, JSON scalars) -> JSON-able tree; tensors go to `tensors`."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().cpu().contiguous().clone()
        return {TENSOR_REF: name}
    if isinstance(value, dict):
        return {str(key): _split(item, f"{name}.{key}", tensors) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(item, f"{name}.{index}", tensors) for index, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"trainer state {name}: {type(value).__name__} cannot be stored without a pickle")


def _join(tree, tensors: dict):
    if isinstance(tree, dict):
        if set(tree) == {TENSOR_REF}:
            return tensors[tree[TENSOR_REF]]
        return {key: _join(item, tensors) for key, item in tree.items()}
    if isinstance(tree, list):
        return [_join(item, tensors) for item in tree]
    return tree


def save_state(folder: str | Path, objects: dict, write: bool) -> None:
    """Every process calls this (state_dicts may gather across processes); `write` on the main one."""
    from safetensors.torch import save_file

    tensors: dict = {}
    tree = {name: _split(obj.state_dict(), name, tensors) for name, obj in objects.items()}
    if write:
        folder = Path(folder)
        save_file(tensors, str(folder / TENSORS_FILE))
        (folder / JSON_FILE).write_text(json.dumps(tree), encoding="utf-8")


def load_state(folder: str | Path, objects: dict) -> None:
    """Load what `save_state` wrote into `objects` (the same names)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        tree = json.loads((folder / JSON_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / TENSORS_FILE))
        states = {name: _join(tree[name], tensors) for name in objects}
    except (OSError, ValueError, KeyError, TypeError, RecursionError, SafetensorError) as error:
        raise CheckpointError(f"cannot read the trainer state in {folder} ({type(error).__name__}: {error}).") from None
    for name, obj in objects.items():
        obj.load_state_dict(states[name])


def read_entry(folder: str | Path, name: str):
    """The JSON part of one object's saved state (tensors left as references), or None when it was not saved."""
    try:
        tree = json.loads((Path(folder) / JSON_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read the trainer state in {folder} ({type(error).__name__}: {error}).") from None
    return tree.get(name) if isinstance(tree, dict) else None
