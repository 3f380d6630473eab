"""A tiny causal video decoder: raw SVD latents -> RGB frames, a sibling of `decoding`.

A narrow per-frame convolutional decoder (a few hundred thousand to a few million parameters,
after TAESD's published recipe: plain 3x3 convs and ReLUs, nearest upsampling, no attention;
one per-frame GroupNorm after the first conv) with a causal memory block at the start of every
level, after TAESDV's idea of cross-frame memory: the block mixes a frame's features with the
previous frame's features at the same point of the network, so frame t sees frames <= t and
nothing after. It is told one thing more: how far frame t is from the clip's end (the last
`end_frames` frames get an extra conv in each memory block). The temporal decoder's convs pad
past the clip's end, so it draws its last frames differently, and its last frame depends on
nothing after it: a causal decoder can learn that once it knows which frame is the last.

Because the only link between frames is "the previous frame's features at each memory block",
decoding chunk by chunk while carrying those features (the state), and saying how many frames
follow each chunk, computes exactly what one pass over the whole clip computes: streaming has
no seams, and its memory depends on the chunk size, never on the clip's length. `python -m sfv_core train-decoder` distils one from a
checkpoint's own temporal decoder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from .decoding import check_latents, plan_chunks, to_frames
from .errors import CheckpointError, InputError
from .models import VAE_SCALING_FACTOR

FORMAT_KEY = "sfv_tiny_decoder"  # safetensors metadata: the config as JSON
FORMAT_VERSION = 1


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass
class TinyDecoderConfig:
    latent_channels: int = _help("Channels of the latent it decodes (SVD's VAE: 4).", 4)
    widths: tuple = _help("Channels of each level, from the latent's resolution up; each level after the first doubles the size (4 levels: 8x, as SVD's VAE). Narrow at full resolution, where the pixels are.", (96, 64, 32, 16))
    blocks: tuple = _help("Residual conv blocks of each level, after its memory block.", (3, 2, 1, 1))
    norm_in: bool = _help("Normalize each frame's features after the first conv (GroupNorm over that frame alone, so streaming stays exact), as the temporal decoder's "
                          "GroupNorms do: SF-V's later latents fade (their spread falls by a third over 8 frames) and the temporal decoder still gives them full contrast.", True)
    end_frames: int = _help("The clip's last this many frames get their own conv in each memory block (learnt, zero at the start): the temporal decoder's convs pad past the clip's end, "
                            "so it draws its last frames differently (in the miniature, against the same clip continued: 23 dB PSNR at the last frame, 38 dB at the one before, 45 dB or more before that); a last frame depends on nothing after it. 0: every frame alike.", 2)
    latent_scale: float = _help("Raw latents are multiplied by this before the first conv (SVD's scaling factor: unit-variance inputs).", VAE_SCALING_FACTOR)

    def __post_init__(self):
        self.widths, self.blocks = tuple(int(w) for w in self.widths), tuple(int(b) for b in self.blocks)
        if self.latent_channels < 1 or not self.widths or min(self.widths) < 1 or len(self.blocks) != len(self.widths) or min(self.blocks) < 0 or self.end_frames < 0:
            raise InputError(f"a tiny decoder needs latent_channels >= 1, one or more positive widths, one block count >= 0 per width and end_frames >= 0, got {self}.")

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


FULL_CONFIG = TinyDecoderConfig()  # 1.41 M parameters (TAESD's decoder: 1.2 M)
TEST_CONFIG = TinyDecoderConfig(widths=(16, 16, 8, 8), blocks=(1, 1, 1, 0))


def conv(channels_in: int, channels_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=bias)


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.conv2 = conv(width, width), conv(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place where autograd allows (a conv does not keep its output): fewer full-size maps alive.
        out = self.conv2(torch.relu_(self.conv1(x)))
        return torch.relu_(out.add_(x))


class MemoryBlock(nn.Module):
    """relu(x_t + conv2(relu(now(x_t) + past(x_{t-1}) [+ ends[d](x_t)]))): the causal link between frames.

    `past` is a per-frame conv, so past(x_{t-1}) is past(x) shifted by one frame: the clip's
    features are never copied into a "previous frames" tensor. A chunk's first frame takes
    past(state), the previous chunk's last input (zeros at a clip's start: no term). A frame
    d frames before the clip's end (d < end_frames) also takes ends[d] of itself."""

    def __init__(self, width: int, end_frames: int = 0):
        super().__init__()
        self.now, self.past, self.conv2 = conv(width, width), conv(width, width, bias=False), conv(width, width)
        self.ends = nn.ModuleList(conv(width, width) for _ in range(end_frames))
        for end in self.ends:  # zero: an untrained end term changes nothing
            nn.init.zeros_(end.weight)
            nn.init.zeros_(end.bias)

    def forward(self, x: torch.Tensor, clips: int, state: torch.Tensor | None, ends: list[tuple[int, int]] = ()) -> torch.Tensor:
        """`ends`: (frame index in the chunk, its distance from the clip's end) of the frames that take an end term."""
        mixed = self.now(x).unflatten(0, (clips, -1))
        past = self.past(x).unflatten(0, (clips, -1))
        mixed[:, 1:] += past[:, :-1]
        del past
        if state is not None:
            mixed[:, 0] += self.past(state.to(x))
        frames = x.unflatten(0, (clips, -1))
        for index, distance in ends:
            mixed[:, index] += self.ends[distance](frames[:, index])
        out = self.conv2(torch.relu_(mixed.flatten(0, 1)))
        return torch.relu_(out.add_(x))


class Level(nn.Module):
    def __init__(self, width: int, blocks: int, next_width: int | None, end_frames: int = 0):
        super().__init__()
        self.memory = MemoryBlock(width, end_frames)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        # Into the next level's width here, then nearest 2x upsampling: the conv runs on a
        # quarter of the pixels and no wide full-size map is ever made.
        self.up = conv(width, next_width, bias=False) if next_width is not None else None


def soft_clamp(scaled_latents: torch.Tensor) -> torch.Tensor:
    """Unit-variance latents squashed into (-3, 3): outlier latents cannot blow up narrow convs."""
    return torch.tanh(scaled_latents / 3) * 3


def frame_norm(width: int) -> nn.GroupNorm:
    """GroupNorm over (N * frames, C, H, W): statistics of each frame on its own."""
    return nn.GroupNorm(max(1, min(32, width // 4)), width, eps=1e-6)


class TinyDecoder(nn.Module):
    def __init__(self, config: TinyDecoderConfig = FULL_CONFIG):
        super().__init__()
        self.config = config
        widths = config.widths
        self.conv_in = conv(config.latent_channels, widths[0])
        nexts = (*widths[1:], None)
        self.levels = nn.ModuleList(Level(width, blocks, next_width, config.end_frames) for width, blocks, next_width in zip(widths, config.blocks, nexts))
        self.norm_in = frame_norm(widths[0]) if config.norm_in else None
        self.conv_out = conv(widths[-1], 3)

    def forward(self, raw_latents: torch.Tensor, state: list[torch.Tensor] | None = None, frames_after: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Raw latents (clips, frames, C, h, w) -> (pixels (clips, frames, 3, H, W) in about [-1, 1]
        as the VAE's decode gives, the state to pass with the next chunk of the same clips).
        `frames_after`: how many frames of the clip follow this chunk (0: it ends the clip)."""
        if frames_after < 0:
            raise InputError(f"frames_after counts the clip's frames after this chunk, so it is 0 or more, got {frames_after}: pass 0 with the clip's last chunk.")
        clips, frames = raw_latents.shape[:2]
        ends = [(index, frames - 1 - index + frames_after) for index in range(frames) if frames - 1 - index + frames_after < self.config.end_frames]
        z = raw_latents.flatten(0, 1) * self.config.latent_scale
        x = torch.relu(self.conv_in(soft_clamp(z)))
        if self.norm_in is not None:
            x = self.norm_in(x)
        new_state = []
        for index, level in enumerate(self.levels):
            new_state.append(x.unflatten(0, (clips, -1))[:, -1].clone())  # a copy: a view would keep the whole chunk's features alive
            x = level.blocks(level.memory(x, clips, None if state is None else state[index], ends))
            if level.up is not None:
                x = nn.functional.interpolate(level.up(x), scale_factor=2.0, mode="nearest")
        return self.conv_out(x).unflatten(0, (clips, -1)), new_state


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- decoding ----------------------------------------------------------------------------


def check_chunk_frames(chunk_frames: int) -> None:
    if not isinstance(chunk_frames, int) or isinstance(chunk_frames, bool) or chunk_frames < 1:
        raise InputError(f"frames per chunk must be a whole number of at least 1, got {chunk_frames!r}: set it to 1 or more (the output is the same for every chunk size; smaller uses less memory).")


@torch.no_grad()
def stream_frames(decoder: TinyDecoder, raw_latents: torch.Tensor, chunk_frames: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Decode clips (clips, frames, C, h, w) `chunk_frames` at a time, carrying the memory
    state: yields (start, end, frames (clips, end - start, H, W, 3) in [0, 1] on the CPU)."""
    check_chunk_frames(chunk_frames)
    param = next(decoder.parameters())
    state = None
    num_frames = raw_latents.shape[1]
    for start, end in plan_chunks(num_frames, chunk_frames):
        pixels, state = decoder(raw_latents[:, start:end].to(param.device, param.dtype), state, frames_after=num_frames - end)
        yield start, end, to_frames(pixels)


def decode_latents(decoder: TinyDecoder, raw_latents: torch.Tensor, chunk_frames: int | None = None, callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Raw latents (clips, frames, C, h, w) -> frames (clips, frames, H, W, 3) float32 in [0, 1],
    as `decoding.decode_latents` gives; `chunk_frames` None decodes each clip in one pass.
    Each clip is streamed on its own (a batch of clips would hold every clip's chunk at once)."""
    check_latents(raw_latents)
    clips, num_frames = raw_latents.shape[:2]
    chunk = num_frames if chunk_frames is None else chunk_frames
    check_chunk_frames(chunk)
    total, done, out = clips * len(plan_chunks(num_frames, chunk)), 0, None
    for clip in range(clips):
        for start, end, frames in stream_frames(decoder, raw_latents[clip : clip + 1], chunk):
            if out is None:
                out = torch.empty((clips, num_frames, *frames.shape[2:]), dtype=torch.float32)
            out[clip, start:end] = frames[0]
            done += 1
            if callback is not None:
                callback(done, total)
    return out


def check_fits(decoder: TinyDecoder, vae) -> None:
    """Refuse a tiny decoder made for another latent space than the model's VAE."""
    check_config_fits(decoder.config, vae.config)


def check_config_fits(config: TinyDecoderConfig, vae_config) -> None:
    """The same check from the configs alone (a file's header and the checkpoint's VAE config),
    so the command line can refuse a wrong decoder before any weights load."""
    vae_upscale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    if config.latent_channels != vae_config["latent_channels"] or config.upscale != vae_upscale:
        raise CheckpointError(
            f"this tiny decoder decodes {config.latent_channels}-channel latents to {config.upscale}x their size, but the model's VAE "
            f"makes {vae_config['latent_channels']}-channel latents at 1/{vae_upscale} size: pick a tiny decoder distilled from this model "
            "(python -m sfv_core train-decoder), or decoder 'full'."
        )


# ---- files -------------------------------------------------------------------------------


def save_tiny_decoder(decoder: TinyDecoder, path: str | Path, dtype: torch.dtype = torch.float32, notes: dict | None = None) -> str:
    """Weights and config in one safetensors file (atomic); `notes` go in the metadata too."""
    from safetensors.torch import save_file

    from .files import atomic_path

    state = {key: value.detach().to("cpu", dtype).contiguous() for key, value in decoder.state_dict().items()}
    metadata = {FORMAT_KEY: decoder.config.to_json(), "format_version": str(FORMAT_VERSION), **{k: str(v) for k, v in (notes or {}).items()}}
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata=metadata)
    return str(path)


def read_metadata(path: str | Path) -> dict:
    """A safetensors file's header metadata (reads the header only)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"tiny decoder file {path} is a folder: give the .safetensors file in it (train-decoder writes export/sfv_tiny_decoder.safetensors).")
    if not path.is_file():
        raise CheckpointError(f"tiny decoder file {path} does not exist: check the path, or write one with python -m sfv_core train-decoder.")
    try:
        with safe_open(str(path), "pt") as handle:
            return handle.metadata() or {}
    except Exception as error:  # safetensors' own errors: truncated, not safetensors, ...
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({error}): it may be truncated or a pickle; export it again with python -m sfv_core train-decoder.") from None


def read_config(path: str | Path) -> TinyDecoderConfig:
    """The config stored in a tiny decoder file's header."""
    metadata, name = read_metadata(path), Path(path).name
    if FORMAT_KEY not in metadata:
        raise CheckpointError(f"{name} is not an SF-V tiny decoder (its header has no {FORMAT_KEY!r} config; TAESD files and checkpoints are other formats): pick a file written by python -m sfv_core train-decoder.")
    try:
        # Files written before norm_in / end_frames existed have no such keys, and neither part.
        return TinyDecoderConfig(**{"norm_in": False, "end_frames": 0, **json.loads(metadata[FORMAT_KEY])})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{name} has a tiny decoder config this version cannot read ({error}): export it again with this version's train-decoder.") from None


def may_be_tiny_decoder_file(path: str | Path) -> bool:
    """False only for files that are readably something else (checkpoints, UNets, TAESD):
    a damaged file stays a candidate, so that choosing it says what is wrong with it."""
    try:
        return FORMAT_KEY in read_metadata(path)
    except CheckpointError:
        return True


def load_tiny_decoder(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TinyDecoder:
    """Rebuild the decoder from the file's config and load its weights strictly."""
    from safetensors.torch import load_file

    config = read_config(path)
    try:
        state = load_file(str(path))
    except Exception as error:
        raise CheckpointError(f"{Path(path).name} could not be read to the end ({error}): the file is truncated; copy or export it again.") from None
    decoder = TinyDecoder(config)
    expected, found = set(decoder.state_dict()), set(state)
    shapes_differ = [k for k in expected & found if decoder.state_dict()[k].shape != state[k].shape]
    if expected != found or shapes_differ:
        detail = f"missing {sorted(expected - found)[:3]}, unexpected {sorted(found - expected)[:3]}, other shapes {shapes_differ[:3]}"
        raise CheckpointError(f"{Path(path).name}'s weights do not match its own config ({detail}): the file is damaged; export it again.")
    decoder.load_state_dict(state, strict=True)
    return decoder.to(device=device, dtype=dtype).train(False).requires_grad_(False)
