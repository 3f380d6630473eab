"""A weight-free video metric: Frechet distance on features of a fixed, seeded random 3D CNN.

FVD proper uses an I3D network trained on Kinetics; its weights would have to be downloaded,
so this is a PROXY: the same Frechet distance between Gaussians fitted to features, with the
features taken from a randomly initialised (seeded, never trained) 3D conv net. Random conv
features are known to separate image distributions usefully (they respond to colour, edges,
texture, blur and, with temporal kernels and a frame-difference input, to motion), but the
numbers are not comparable to published FVDs: only to each other, at the same seed.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_SEED = 1234


class RandomVideoFeatures(nn.Module):
    """(N, F, H, W, 3) in [0, 1] -> (N, D) features. Input: the frames and their frame-to-frame
    differences; three strided 3D convolutions; per-channel mean and std over space-time of the
    last two layers (D = 2 * (c2 + c3))."""

    def __init__(self, seed: int = FEATURE_SEED, widths=(16, 32, 48)):
        super().__init__()
        c1, c2, c3 = widths
        self.conv1 = nn.Conv3d(6, c1, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2))
        self.conv2 = nn.Conv3d(c1, c2, (3, 3, 3), stride=(1, 2, 2), padding=1)
        self.conv3 = nn.Conv3d(c2, c3, (3, 3, 3), stride=(1, 2, 2), padding=1)
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for conv in (self.conv1, self.conv2, self.conv3):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
        self.requires_grad_(False).train(False)

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.float().permute(0, 4, 1, 2, 3) * 2 - 1  # (N, 3, F, H, W) in [-1, 1]
        diff = torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, 1:] - x[:, :, :-1]], dim=2)
        h1 = torch.nn.functional.leaky_relu(self.conv1(torch.cat([x, 4 * diff], dim=1)), 0.2)
        h2 = torch.nn.functional.leaky_relu(self.conv2(h1), 0.2)
        h3 = torch.nn.functional.leaky_relu(self.conv3(h2), 0.2)
        pooled = [torch.cat([h.mean(dim=(2, 3, 4)), h.std(dim=(2, 3, 4))], dim=1) for h in (h2, h3)]
        return torch.cat(pooled, dim=1).double()


def video_features(clips: torch.Tensor, seed: int = FEATURE_SEED, batch: int = 64) -> torch.Tensor:
    net = RandomVideoFeatures(seed)
    return torch.cat([net(chunk) for chunk in clips.split(batch)])


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64."""
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle
    return max(float(value), 0.0)


def video_distance(clips_a: torch.Tensor, clips_b: torch.Tensor, seed: int = FEATURE_SEED) -> float:
    """The FVD proxy between two sets of clips (N, F, H, W, 3) in [0, 1]."""
    return frechet_distance(video_features(clips_a, seed), video_features(clips_b, seed))


def motion(clips: torch.Tensor) -> float:
    """Mean absolute frame-to-frame pixel change (in [0, 1] units)."""
    return float((clips[:, 1:] - clips[:, :-1]).abs().mean())


def first_frame_error(clips: torch.Tensor, start_images: torch.Tensor) -> float:
    """Mean absolute difference between each generated clip's first frame and its start image."""
    return float((clips[:, 0] - start_images).abs().mean())


def ssim(frames: torch.Tensor, reference: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, per RGB
    channel, valid positions only) of frames (..., H, W, 3) in [0, 1] against a reference.
    Written here because no package the project depends on has one (15 lines, not a dependency)."""
    x, y = (t.float().reshape(-1, *t.shape[-3:]).permute(0, 3, 1, 2) for t in (frames, reference))
    g = torch.exp(-((torch.arange(window) - window // 2) ** 2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, window, window)
    blur = lambda t: torch.nn.functional.conv2d(t, kernel, groups=3)
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(value.mean())
