"""Exponential moving average of the generator's weights (SF-V: decay 0.95 per step).

It tracks the parameters of the model as the distributed engine holds them (whole under DDP,
local shards under FSDP), so it needs no gathering while training; `swapped_in` puts the
average into the live model for a moment, which is how it is sampled and exported.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, parameters, decay: float):
        self.parameters = [p for p in parameters]
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * current."""
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.parameters], 1.0 - self.decay)

    @contextmanager
    def swapped_in(self):
        """Temporarily load the averaged weights into the model."""
        saved = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for p, s in zip(self.parameters, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.parameters, saved):
                    p.copy_(s)

    def state_dict(self) -> dict:
        """Whole tensors (shards are gathered under FSDP2: every process must call this, as accelerate does)."""
        return {"decay": self.decay, "shadow": [_full(s).cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = [_like(s, p) for s, p in zip(state["shadow"], self.parameters)]


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _like(whole: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """`whole` placed like `parameter`: the same device, and the same sharding for a DTensor."""
    if hasattr(parameter, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(whole.to(parameter.device).float(), parameter.device_mesh, parameter.placements)
    return whole.to(parameter.device).float()
