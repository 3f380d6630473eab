"""LoRA training mode: PEFT adapters on the frozen UNet, the encoder sharing the base, resume, refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from sfv_core.errors import InputError
from sfv_core.models import TINY, build_random_model
from sfv_core.train import checkpointing
from sfv_core.train.adapters import TARGET_GROUPS, LoraAdapters, check_model_targets
from sfv_core.train.config import ModelConfig
from sfv_core.train.discriminator import FrozenUNetEncoder
from sfv_core.train.memory import enable_activation_checkpointing
from sfv_core.train.trainer import Trainer
from test_train import FRAMES, run_state, tiny_cond, tiny_config, videos  # noqa: F401 (videos is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
ALL_GROUPS = list(TARGET_GROUPS)
LORA = ("adapter=lora", "lora_rank=4", "lora_alpha=4")


def lora_config(rank=4, targets=None) -> ModelConfig:
    return ModelConfig(path="tiny-random", adapter="lora", lora_rank=rank, lora_alpha=float(rank), lora_targets=targets or ALL_GROUPS)


def with_random_adapters(unet, targets=None):
    """A tiny UNet with adapters whose up factors are non-zero, so they change its output."""
    adapters = LoraAdapters(unet, lora_config(targets=targets))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return adapters


def test_every_group_selects_layers_and_the_kinds_are_the_real_ones():
    unet = build_random_model(TINY).unet
    adapters = with_random_adapters(unet)
    names = list(adapters.layers)
    assert any("temporal_transformer_blocks" in n and n.endswith("attn1.to_q") for n in names)
    assert any(n.endswith("transformer_blocks.0.ff.net.2") and "temporal" not in n for n in names)
    assert any(n.endswith("temporal_res_block.conv1") for n in names) and any(n.endswith("spatial_res_block.conv2") for n in names)
    conv3d = adapters.layers[next(n for n in names if n.endswith("temporal_res_block.conv1"))]
    assert isinstance(conv3d.base_layer, torch.nn.Conv3d)
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


def test_the_shared_encoder_sees_the_base_and_its_gradients_survive_checkpointing():
    unet = build_random_model(TINY).unet
    base_encoder = FrozenUNetEncoder(copy.deepcopy(unet), "before_downsample")
    adapters = with_random_adapters(unet)
    shared = FrozenUNetEncoder(unet, "before_downsample", base_context=adapters.off)
    assert list(shared.parameters()) == []  # nothing duplicated, nothing registered twice
    enable_activation_checkpointing(unet, adapters.recompute)
    enable_activation_checkpointing(base_encoder)
    unet.train()
    cond, sigma = tiny_cond(), torch.tensor([0.5, 30.0])
    grads, outputs = [], []
    for encoder in (shared, base_encoder):
        x = torch.randn(2, FRAMES, 4, 6, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        features = encoder(x, sigma, cond)
        # The backward (with its recompute) runs with the adapters ON again.
        sum(f.square().mean() for f in features).backward()
        outputs.append([f.detach() for f in features])
        grads.append(x.grad)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*outputs))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert adapters.enabled
    # ... and the adapters do change the UNet itself.
    from sfv_core.sampling import denoise

    x = torch.randn(2, FRAMES, 4, 6, 8)
    with torch.no_grad():
        on = denoise(unet, x, sigma, cond)
        with adapters.off():
            off = denoise(unet, x, sigma, cond)
    assert (on - off).abs().max() > 1e-3


def test_a_lora_step_trains_only_the_adapters_and_the_heads(videos, tmp_path):
    trainer = Trainer(tiny_config(videos, tmp_path, *LORA, "gradient_accumulation=1"))
    trainer.setup_data()
    assert list(trainer.encoder.parameters()) == []
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    heads_before = {k: v.clone() for k, v in trainer.heads.state_dict().items()}
    trainer.train_step()
    after = trainer.generator.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert any(not torch.equal(v, trainer.heads.state_dict()[k]) for k, v in heads_before.items())
    assert len(trainer.ema.shadow) == len(trainer.adapters.parameters())


def test_a_lora_run_resumes_exactly_and_its_checkpoints_hold_no_base_weights(videos, tmp_path):
    straight = Trainer(tiny_config(videos, tmp_path / "a", *LORA, "steps=4"))
    straight.train()
    Trainer(tiny_config(videos, tmp_path / "b", *LORA, "steps=2")).train()
    folder = checkpointing.latest_checkpoint(tmp_path / "b")
    assert not list(folder.glob("model*.safetensors")) and not list(folder.glob("pytorch_model*"))
    resumed = Trainer(tiny_config(videos, tmp_path / "b", *LORA, "steps=4"))
    resumed.train()
    a, b = run_state(straight), run_state(resumed)
    assert a["losses"] == b["losses"]
    assert all(torch.equal(a["g"][k], b["g"][k]) for k in a["g"])
    assert all(torch.equal(a["heads"][k], b["heads"][k]) for k in a["heads"])
    assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"]))


@pytest.mark.parametrize("first,then", [(LORA, ()), ((), LORA), (LORA, ("adapter=lora", "lora_rank=2", "lora_alpha=4"))])
def test_resuming_with_another_adapter_setting_is_refused_before_loading(videos, tmp_path, first, then):
    Trainer(tiny_config(videos, tmp_path, *first, "steps=2", "gradient_accumulation=1")).train()
    with pytest.raises(InputError, match="the checkpoint in .* was trained with model.adapter .* the config says model.adapter"):
        Trainer(tiny_config(videos, tmp_path, *then, "steps=3", "gradient_accumulation=1")).train()


@pytest.mark.parametrize("settings,message", [
    ({"lora_targets": ["to_qkv"]}, "matches no Linear or Conv layer of this UNet: use a group"),
    ({"lora_targets": ["attention["]}, "neither a group .* nor a valid regex"),
    ({"lora_rank": 64}, "larger than .* target layer"),
])
def test_bad_lora_targets_are_refused_from_the_architecture_alone(settings, message):
    model = lora_config()
    for key, value in settings.items():
        setattr(model, key, value)
    with pytest.raises(InputError, match=message):
        check_model_targets(model, TINY.unet)


@pytest.mark.parametrize("sets,message", [
    (("lora_rank=8",), "model.lora_rank belong to model.adapter lora"),
    (("adapter=lora", "lora_rank=0"), "lora_rank must be a whole number >= 1"),
    (("adapter=lora", "lora_dropout=1.0"), r"lora_dropout must be in \[0, 1\)"),
    (("adapter=partial",), "model.adapter must be one of"),
])
def test_contradicting_adapter_settings_are_one_line(videos, tmp_path, sets, message):
    with pytest.raises(InputError, match=message):
        tiny_config(videos, tmp_path, *sets).validate()


def test_the_exported_lora_merged_the_pack_s_way_equals_the_trained_generator(videos, tmp_path):
    from sfv_core.checkpoints import load_model
    from sfv_core.lora import read_lora
    from sfv_core.sampling import denoise
    from sfv_core.train.trainer import LORA_FILE, SINGLE_FILE

    # A large learning rate and the EMA = the live weights: after two steps at 1e-5 the deltas are near float32's rounding of
    # the weights they are merged into, and the comparison would measure that rounding.
    trainer = Trainer(tiny_config(videos, tmp_path, *LORA, "steps=2", "export_single_file=true", "lr_generator=0.01", "ema_decay=0",
                                  "lora_targets=[attention,temporal_resnets]"))
    trainer.train()
    paths = trainer.export()
    assert [p.name for p in paths] == [LORA_FILE, SINGLE_FILE]
    base = build_random_model(TINY).unet  # tiny-random: the trainer's base, same seed
    layers = read_lora(tmp_path / "export" / LORA_FILE, base)
    assert set(layers) == set(trainer.adapters.layers) and all(l.rank == 4 for l in layers.values())
    from sfv_core.lora import merge_lora

    merge_lora(base, layers, 1.0)
    merged_file = load_model(tmp_path / "export" / SINGLE_FILE).unet
    cond, sigma = tiny_cond(), torch.tensor([0.5, 30.0])
    x = torch.randn(2, FRAMES, 4, 6, 8)
    with torch.no_grad(), trainer.ema.swapped_in():
        trained = denoise(trainer.generator, x, sigma, cond)
        with trainer.adapters.off():
            effect = (denoise(trainer.generator, x, sigma, cond) - trained).abs().max()
        for unet in (base, merged_file):
            assert (denoise(unet.train(False), x, sigma, cond) - trained).abs().max() < 1e-2 * effect  # merging rounds small deltas into fp32 weights
    assert effect > 1e-2  # two steps did move the adapters


@pytest.mark.parametrize("sets", [("r1_mode=exact", "heads=spatial"), ("r1_mode=approximate", "heads=temporal", "gradient_checkpointing=false")])
def test_lora_mode_runs_both_r1_modes_and_head_kinds(videos, tmp_path, sets):
    trainer = Trainer(tiny_config(videos, tmp_path, *LORA, "gradient_accumulation=1", "r1_interval=1", "lr_generator=0.01", *sets))
    trainer.setup_data()
    values = trainer.train_step()
    assert torch.isfinite(torch.tensor(values["r1_last"])) and values["r1_last"] > 0
    moved = [n for n, p in trainer.generator.named_parameters() if ".lora_B." in n and p.abs().max() > 0]
    assert moved
