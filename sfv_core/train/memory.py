"""Activation (gradient) checkpointing for SVD's UNet and its frozen encoder copy.

diffusers' `enable_gradient_checkpointing()` recomputes the resnets and the SPATIAL
transformer blocks, but not the temporal transformer blocks (TemporalBasicTransformerBlock),
whose feed-forward activations over every pixel's frame sequence then dominate: at 768x448,
14 frames, about 24 of the 34 GB a checkpointed generator pass still keeps (see
benchmarks/bench_train.py --estimate). This module does what diffusers does and also
recomputes those temporal blocks. Parameters and state-dict names are untouched.
"""

from __future__ import annotations

import torch


def recompute(module, *args):
    """diffusers' default checkpoint function: non-reentrant (works with DDP, FSDP and double backward)."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def _checkpoint_temporal_block(block: torch.nn.Module, checkpoint_func) -> None:
    original = block.forward

    def forward(hidden_states, num_frames, encoder_hidden_states=None):
        if not torch.is_grad_enabled():
            return original(hidden_states, num_frames, encoder_hidden_states)
        run = lambda h, context: original(h, num_frames, context)  # num_frames is an int, not an input
        return checkpoint_func(run, hidden_states, encoder_hidden_states)

    block.forward = forward  # an instance attribute: the class and the weights stay as they are


def enable_activation_checkpointing(model: torch.nn.Module, checkpoint_func=recompute) -> None:
    """Recompute resnets, spatial and temporal transformer blocks of `model` in backward."""
    from diffusers.models.attention import TemporalBasicTransformerBlock

    for module in model.modules():
        if hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = True
            module._gradient_checkpointing_func = checkpoint_func
        if isinstance(module, TemporalBasicTransformerBlock):
            _checkpoint_temporal_block(module, checkpoint_func)
