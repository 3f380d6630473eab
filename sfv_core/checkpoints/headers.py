"""Reading safetensors headers and tensors: a file is validated from its header and size
before any tensor is read; pickles are refused without being opened as pickles."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from ..errors import CheckpointError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit; a larger "length" means not safetensors


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
    def reader(self) -> Iterator[Callable[[str, torch.dtype], tuple[torch.Tensor, bool]]]:
        """Yields get(key, dtype) -> (a CPU tensor in the file's dtype, whether the caller owns it).

        A tensor already in `dtype` (or not floating point) is read into a fresh buffer the
        caller keeps. One that must be converted is read into a staging buffer reused for every
        such tensor and valid until the next call: the caller converts it into its own tensor,
        so each byte is written to fresh memory once (a fresh buffer per tensor would make the
        kernel fault in and zero file-sized memory a second time).
        Plain reads, not safetensors' memory map: mapped pages that were read stay in the
        process's resident memory until the whole file is unmapped, so converting dtype on the
        way (fp16 file -> fp32 model) would peak at file + model.
        """
        with ExitStack() as stack:
            handles = {path: stack.enter_context(path.open("rb", buffering=0)) for path in set(self.files.values())}
            staging = torch.empty(0, dtype=torch.uint8)

            def get(key: str, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
                nonlocal staging
                entry = self.entries[key]
                converted = entry.dtype.is_floating_point and entry.dtype != dtype
                size = math.prod(entry.shape) * entry.dtype.itemsize
                if converted and staging.numel() < size:
                    staging = torch.empty(size, dtype=torch.uint8)
                into = staging[:size] if converted else torch.empty(size, dtype=torch.uint8)
                return _read_tensor(handles[self.files[key]], entry, key, into), not converted

            yield get


def _read_tensor(handle, entry: TensorEntry, key: str, data: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes read into `data` (uint8, exactly its size), viewed as the tensor."""
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
        raise CheckpointError(f"{path} is not a valid safetensors file (unreadable header: {error}). Download it again.") from None
    except RecursionError:
        raise CheckpointError(f"{path} is not a valid safetensors file (its header is nested too deeply to be a table of tensors). Download it again.") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a valid safetensors file (its header is not a table of tensors).")
    header.pop("__metadata__", None)
    entries = _entries(path, header, 8 + header_bytes, size)
    return Weights(str(path), entries, {key: path for key in entries})


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(path: Path, key: str, info) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, as strictly as the safetensors library reads it."""
    damaged = f"{path} has a damaged header entry for {key!r}: {str(info)[:200]}"
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or not isinstance(info.get("shape"), list) or not isinstance(info.get("data_offsets"), list):
        raise CheckpointError(f"{damaged} (expected dtype, shape and data_offsets). Download it again.")
    if info["dtype"] not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"{damaged} (unsupported dtype {info['dtype']!r}; supported: {', '.join(_SAFETENSORS_DTYPES)}).")
    shape, offsets = info["shape"], info["data_offsets"]
    if not all(_whole(dim) and dim >= 0 for dim in shape):
        raise CheckpointError(f"{damaged} (dimensions must be whole numbers >= 0). Download it again.")
    if len(offsets) != 2 or not all(_whole(offset) for offset in offsets) or not 0 <= offsets[0] <= offsets[1]:
        raise CheckpointError(f"{damaged} (data_offsets must be two whole numbers 0 <= begin <= end). Download it again.")
    dtype = _SAFETENSORS_DTYPES[info["dtype"]]
    if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
        raise CheckpointError(f"{path} has a damaged header: tensor {key!r} of shape {tuple(shape)} does not fit its data offsets. Download it again.")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _entries(path: Path, header: dict, data_start: int, size: int) -> dict[str, TensorEntry]:
    """The tensors of a header whose data ranges are sorted, contiguous and cover the data exactly
    (what the safetensors library requires): header bytes or another tensor's bytes are never read as weights."""
    parsed = {key: _entry(path, key, info) for key, info in header.items()}
    position = 0
    for key, (_dtype, _shape, begin, end) in sorted(parsed.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != position:
            what = "overlaps another tensor's bytes" if begin < position else f"leaves a gap of {begin - position} bytes before it"
            raise CheckpointError(f"{path} has a damaged header: tensor {key!r} {what} (data_offsets must be contiguous). Download it again.")
        position = end
    needed = data_start + position
    if needed > size:
        raise CheckpointError(
            f"{path} is truncated: its header says the tensor data runs to {needed} bytes but the file has only {size} bytes "
            f"({100 * size / needed:.1f}%). An incomplete download or copy: download it again."
        )
    if needed < size:
        raise CheckpointError(f"{path} has {size - needed} bytes after the tensor data its header lists: the file is damaged or not one safetensors file. Download it again.")
    return {key: TensorEntry(dtype, shape, data_start + begin) for key, (dtype, shape, begin, _end) in parsed.items()}


def _read_sharded(index_path: Path) -> Weights:
    """A part split over several files, listed by a `*.safetensors.index.json`."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise CheckpointError(f"{index_path} is not a valid safetensors index ({type(error).__name__}: {error}).") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v and "/" not in v and "\\" not in v for v in weight_map.values()):
        raise CheckpointError(f"{index_path} is not a valid safetensors index: weight_map must map tensor names to shard file names in its folder.")
    entries, files = {}, {}
    for shard_name in sorted(set(weight_map.values())):
        shard = read_safetensors_header(index_path.parent / shard_name)
        entries |= shard.entries
        files |= shard.files
    return Weights(str(index_path.parent), entries, files)
