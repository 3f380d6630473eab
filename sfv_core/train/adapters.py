"""LoRA training mode: PEFT adapters on a frozen SVD UNet, whose base weights the
discriminator's encoder shares (one UNet in memory, not 1.5).

PEFT (the library diffusers uses for its adapters) wraps the target Linear / Conv layers;
only their low-rank factors train. The frozen encoder calls the same modules with the
adapters switched off, so it sees the ORIGINAL UNet, as the full recipe's deep copy does.

Activation checkpointing recomputes a block's forward in backward, when the adapters are
on again: `LoraAdapters.recompute` records whether they were on when the block ran and
recomputes it in that state (else the encoder's recomputed activations would include the
adapters and its gradients would be wrong).
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import InputError

ADAPTERS = ("full", "lora")
ADAPTER_NAME = "default"
# Named groups of target layers (module names of diffusers' UNetSpatioTemporalConditionModel):
# spatial blocks are `transformer_blocks`, temporal ones `temporal_transformer_blocks`.
TARGET_GROUPS = {
    "attention": r".*transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)",
    "feed_forward": r".*transformer_blocks\.\d+\.(ff|ff_in)\.net\.(0\.proj|2)",
    "spatial_resnets": r".*resnets\.\d+\.spatial_res_block\.(conv1|conv2)",
    "temporal_resnets": r".*resnets\.\d+\.temporal_res_block\.(conv1|conv2)",
}
ADAPTABLE = (nn.Linear, nn.Conv2d, nn.Conv3d)


def adapter_weights(state: dict) -> dict:
    """The adapters' factors of a UNet state dict (PEFT's `<module>.lora_A/lora_B.<adapter>.weight`)."""
    return {k: v for k, v in state.items() if ".lora_" in k}


def base_weights(state: dict) -> dict:
    """The frozen base of a UNet state dict, under the plain UNet's names (PEFT inserts `base_layer`)."""
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}


def target_pattern(targets) -> str:
    """One full-match regex over module names (PEFT's string form of target_modules)."""
    return "|".join(f"(?:{TARGET_GROUPS.get(t, t)})" for t in targets)


def fan(layer: nn.Module) -> tuple[int, int]:
    """(inputs, outputs) of the layer's weight as a matrix: the most a LoRA rank can use."""
    weight = layer.weight
    return weight[0].numel(), weight.shape[0]


def resolve_targets(unet: nn.Module, targets, rank: int) -> list[str]:
    """Names of the layers the targets select (each target must select some), checked against the rank."""
    layers = {name: m for name, m in unet.named_modules() if isinstance(m, ADAPTABLE)}
    selected: dict[str, nn.Module] = {}
    for target in targets:
        try:
            pattern = re.compile(TARGET_GROUPS.get(target, target))
        except re.error as error:
            raise InputError(f"model.lora_targets entry {target!r} is neither a group ({', '.join(TARGET_GROUPS)}) nor a valid regex ({error})") from None
        matched = [name for name in layers if pattern.fullmatch(name)]
        if not matched:
            examples = ", ".join(list(layers)[i] for i in range(0, len(layers), max(1, len(layers) // 6)))
            raise InputError(
                f"model.lora_targets entry {target!r} matches no Linear or Conv layer of this UNet: use a group "
                f"({', '.join(TARGET_GROUPS)}) or a regex over module names such as {examples}"
            )
        selected.update((name, layers[name]) for name in matched)
    too_small = [f"{name} ({min(fan(m))})" for name, m in selected.items() if rank > min(fan(m))]
    if too_small:
        raise InputError(
            f"model.lora_rank {rank} is larger than {len(too_small)} target layer(s) can use (their smaller side): "
            f"{', '.join(too_small[:4])}{' ...' if len(too_small) > 4 else ''}; lower the rank or drop those targets"
        )
    return list(selected)


def check_model_targets(model_cfg, unet_config: dict) -> list[str]:
    """The targets resolved on a meta-device UNet built from a config: no weights are read."""
    from ..models import build_unet

    with torch.device("meta"):
        unet = build_unet(unet_config)
    return resolve_targets(unet, model_cfg.lora_targets, model_cfg.lora_rank)


class LoraAdapters:
    """The adapters of one UNet: injection, switching them off, recompute, export, checkpoint state."""

    def __init__(self, unet: nn.Module, model_cfg):
        try:
            from peft import LoraConfig, inject_adapter_in_model
            from peft.tuners.tuners_utils import BaseTunerLayer
        except ImportError:
            from . import EXTRAS_INSTALL

            raise InputError(f"model.adapter lora needs PEFT, which is not installed: {EXTRAS_INSTALL}") from None

        self.spec = {"adapter": "lora", "rank": model_cfg.lora_rank, "alpha": float(model_cfg.lora_alpha), "targets": list(model_cfg.lora_targets)}
        self.targets = resolve_targets(unet, model_cfg.lora_targets, model_cfg.lora_rank)
        unet.requires_grad_(False)
        config = LoraConfig(r=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha, lora_dropout=model_cfg.lora_dropout,
                            target_modules=target_pattern(model_cfg.lora_targets), init_lora_weights=True)
        inject_adapter_in_model(config, unet, adapter_name=ADAPTER_NAME)
        self.unet = unet
        self.layers = {name: m for name, m in unet.named_modules() if isinstance(m, BaseTunerLayer)}
        self.enabled = True

    # ---- on / off ---------------------------------------------------------------------

    def _switch(self, enabled: bool) -> None:
        if enabled != self.enabled:
            for layer in self.layers.values():
                layer.enable_adapters(enabled)
            self.enabled = enabled

    @contextmanager
    def switched(self, enabled: bool):
        before = self.enabled
        self._switch(enabled)
        try:
            yield
        finally:
            self._switch(before)

    def off(self):
        """The base UNet, for the frozen encoder's passes."""
        return self.switched(False)

    def recompute(self, function, *args):
        """A checkpoint function for `enable_activation_checkpointing`: recomputes in the state the forward ran in."""
        state = self.enabled

        def run(*inputs):
            with self.switched(state):
                return function(*inputs)

        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)

    # ---- weights ------------------------------------------------------------------------

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def lora_layers(self, state: dict | None = None) -> dict:
        """{module name: LoraLayer} from the live weights, or from a state dict of the UNet
        (e.g. gathered under FSDP), in float32 on the CPU."""
        from ..lora import peft_layers

        state = state if state is not None else self.unet.state_dict()
        factors = {k: v.detach().float().cpu() for k, v in adapter_weights(state).items()}
        return peft_layers(factors, self.spec["alpha"])

    def state_dict(self) -> dict:
        """The spec and the adapter weights (the frozen base is not checkpointed: it is the base file)."""
        return {**self.spec, "weights": {k: v.detach().cpu() for k, v in adapter_weights(self.unet.state_dict()).items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state[k] for k in self.spec}
        if saved != self.spec:
            raise InputError(f"this run's checkpoint was trained with {describe(saved)}, the config says {describe(self.spec)}: "
                             "set the checkpoint's settings, or use another run.output_dir")
        own = set(adapter_weights(self.unet.state_dict()))
        if set(state["weights"]) != own:
            raise InputError("the checkpoint's adapter weights do not match this UNet's adapters: use another run.output_dir")
        with torch.no_grad():
            named = dict(self.unet.named_parameters())
            for key, value in state["weights"].items():
                named[key].copy_(value)


def describe(spec: dict | None) -> str:
    """'model.adapter lora (rank 8, alpha 8, targets attention, feed_forward)' or 'model.adapter full'."""
    if not spec or spec.get("adapter", "full") == "full":
        return "model.adapter full"
    return f"model.adapter lora (rank {spec['rank']}, alpha {spec['alpha']:g}, targets {', '.join(spec['targets'])})"
