"""SF-V's discriminator: the frozen encoder half of the SVD UNet plus 8 small trainable heads.

Features: the original UNet's conv_in, time / added-time embeddings and its 4 down blocks,
fed exactly what the UNet sees inside `sampling.denoise` (cat[c_in * x, z_img], c_noise,
e_img, t_ids). After each down block a spatial head reads (B*T, C, H, W) and a temporal head
reads (B*H*W, C, T).

Conditioning (our documented choice among the two the issue allows): a PROJECTION
discriminator (Miyato & Koyama 2018). Each head ends in features phi (W channels per
position); its logit is <phi, p(c)> where p(c) = Linear(e(c)) has a bias (the bias is the
unconditional weight w of `w^T phi + c^T V phi`). e(c) embeds the condition of the position's
clip and frame: the CLIP image embedding, the noise level (c_noise) and the frame index.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import torch
from torch import nn

from ..sampling import Conditioning, unet_input

HEAD_KINDS = ("both", "spatial", "temporal")
# Where each down block's features are read: its output (after its downsampler), or its last
# layer's output before the downsampler (twice the resolution on the first three levels).
FEATURE_POINTS = ("block_output", "before_downsample")
EMBED_WIDTH = 64  # sinusoidal width for the noise level and the frame index


class FrozenUNetEncoder(nn.Module):
    """conv_in, embeddings and down blocks of a UNetSpatioTemporalConditionModel: deep copies, or
    with `base_context` the UNet's own modules, run inside that context (LoRA training: the
    adapters off, so it sees the base weights; they are not registered here, so this module
    neither moves, freezes, switches to eval mode nor saves them).

    Frozen: no parameter is trainable, but gradients flow through it to its input (the
    generator's adversarial loss and the R1 penalty need them).
    """

    PARTS = ("conv_in", "time_proj", "time_embedding", "add_time_proj", "add_embedding", "down_blocks")

    def __init__(self, unet: nn.Module, feature_point: str = "block_output", base_context=None):
        super().__init__()
        if feature_point not in FEATURE_POINTS:
            raise ValueError(f"discriminator features must be read at one of {FEATURE_POINTS}, got {feature_point!r}")
        self.feature_point = feature_point
        self.base_context = base_context or nullcontext
        for name in self.PARTS:
            if base_context is None:
                setattr(self, name, copy.deepcopy(getattr(unet, name)))
            else:
                vars(self)[name] = getattr(unet, name)  # a plain attribute: shared, not a submodule
        self.channels = [block.resnets[-1].spatial_res_block.out_channels for block in self.down_blocks]
        self.requires_grad_(False).train(False)

    def train(self, mode: bool = True) -> "FrozenUNetEncoder":
        return super().train(False)  # always eval: a frozen feature extractor

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> list[torch.Tensor]:
        """Features (B*T, C_i, H_i, W_i) after each down block for latents x (B, T, 4, h, w)."""
        with self.base_context():
            return self._features(x, sigma, cond)

    def _features(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> list[torch.Tensor]:
        sample, c_noise = unet_input(x, sigma, cond)
        dtype = self.conv_in.weight.dtype
        batch, frames = sample.shape[:2]
        # Mirrors UNetSpatioTemporalConditionModel.forward up to the mid block.
        emb = self.time_embedding(self.time_proj(c_noise.expand(batch)).to(dtype))
        time_embeds = self.add_time_proj(cond.added_time_ids.to(dtype).flatten()).reshape(batch, -1)
        emb = (emb + self.add_embedding(time_embeds.to(emb.dtype))).repeat_interleave(frames, dim=0)
        context = cond.image_embeds.to(dtype).repeat_interleave(frames, dim=0)
        hidden = self.conv_in(sample.to(dtype).flatten(0, 1))
        image_only_indicator = torch.zeros(batch, frames, dtype=dtype, device=hidden.device)
        features = []
        for block in self.down_blocks:
            kwargs = dict(hidden_states=hidden, temb=emb, image_only_indicator=image_only_indicator)
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = context
            hidden, states = block(**kwargs)
            downsampled = getattr(block, "downsamplers", None) is not None
            features.append(states[-2] if downsampled and self.feature_point == "before_downsample" else hidden)
        return features


def sinusoidal(values: torch.Tensor, width: int = EMBED_WIDTH) -> torch.Tensor:
    """Transformer-style sin/cos embedding of a float tensor (..., ) -> (..., width)."""
    half = width // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    angles = values.float().unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice with a skip; 2D or 1D by `conv`."""

    def __init__(self, channels: int, conv: type[nn.Module]):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(channels), channels), nn.SiLU(), conv(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels), nn.SiLU(), conv(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ProjectionHead(nn.Module):
    """Conv -> ResBlock -> Conv giving features phi; logit = <phi, Linear(cond)> per position."""

    def __init__(self, in_channels: int, width: int, cond_width: int, conv: type[nn.Module]):
        super().__init__()
        self.features = nn.Sequential(conv(in_channels, width, 3, padding=1), ResBlock(width, conv), nn.SiLU(), conv(width, width, 1))
        self.projection = nn.Linear(cond_width, width)
        self.scale = width**-0.5  # keeps initial logits O(1) whatever the width

    def forward(self, x: torch.Tensor, cond_embedding: torch.Tensor) -> torch.Tensor:
        """x (N, C, *positions), cond_embedding (N, cond_width, *positions or 1s) -> logits (N, *positions)."""
        phi = self.features(x)
        p = self.projection(cond_embedding.movedim(1, -1)).movedim(-1, 1)
        return (phi * p).sum(1) * self.scale


class DiscriminatorHeads(nn.Module):
    """The trainable part: a condition embedding and a spatial / temporal head per down block."""

    def __init__(self, feature_channels: list[int], image_embed_dim: int, width: int = 256, cond_width: int = 256, kind: str = "both"):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"discriminator heads must be one of {HEAD_KINDS}, got {kind!r}")
        self.kind = kind
        self.cond_embed = nn.Sequential(nn.Linear(image_embed_dim + 2 * EMBED_WIDTH, cond_width), nn.SiLU(), nn.Linear(cond_width, cond_width))
        make = lambda conv: nn.ModuleList(ProjectionHead(c, width, cond_width, conv) for c in feature_channels)
        self.spatial = make(nn.Conv2d) if kind in ("both", "spatial") else None
        self.temporal = make(nn.Conv1d) if kind in ("both", "temporal") else None

    def embed_condition(self, sigma: torch.Tensor, cond: Conditioning, frames: int) -> torch.Tensor:
        """(B, T, cond_width): image embedding, noise level and frame index of each (clip, frame)."""
        batch = sigma.shape[0]
        device = sigma.device
        dtype = self.cond_embed[0].weight.dtype
        image = cond.image_embeds[:, 0].to(dtype).unsqueeze(1).expand(-1, frames, -1)
        noise = sinusoidal(0.25 * torch.log(sigma)).unsqueeze(1).expand(-1, frames, -1)
        frame = sinusoidal(torch.arange(frames, device=device, dtype=torch.float32)).unsqueeze(0).expand(batch, -1, -1)
        return self.cond_embed(torch.cat([image, noise.to(dtype), frame.to(dtype)], dim=-1))

    def forward(self, features: list[torch.Tensor], sigma: torch.Tensor, cond: Conditioning) -> list[torch.Tensor]:
        """Per-position logits, one tensor per head: spatial (B*T, H, W), temporal (B*H*W, T)."""
        batch = sigma.shape[0]
        frames = features[0].shape[0] // batch
        dtype = self.cond_embed[0].weight.dtype  # the frozen encoder may run in another dtype
        c = self.embed_condition(sigma, cond, frames)  # (B, T, E)
        logits = []
        for index, f in enumerate(features):
            f = f.to(dtype)
            _, channels, height, width = f.shape
            if self.spatial is not None:
                logits.append(self.spatial[index](f, c.flatten(0, 1)[:, :, None, None]))
            if self.temporal is not None:
                # (B*T, C, H, W) -> (B*H*W, C, T): every pixel's feature sequence over time.
                seq = f.reshape(batch, frames, channels, height, width).permute(0, 3, 4, 2, 1).reshape(-1, channels, frames)
                c_seq = c.transpose(1, 2).repeat_interleave(height * width, dim=0)  # (B*H*W, E, T)
                logits.append(self.temporal[index](seq, c_seq))
        return logits
