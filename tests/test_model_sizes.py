"""The sizes and frame counts a UNet can run follow from its architecture (models.check_unet_can_run):
checked against real forward passes of the toy and tiny UNets, and against the full-size layout."""

import pytest
import torch

from sfv_core import models
from sfv_core.errors import InputError
from sfv_core.toy.experiment import TOY_CONFIGS

torch.set_num_threads(1)


def _forward(unet, config, width, height, frames):
    x = torch.randn(1, frames, config["in_channels"], height // 8, width // 8)
    return unet(x, torch.tensor([1.0]), torch.randn(1, 1, config["cross_attention_dim"]), added_time_ids=torch.randn(1, 3)).sample


@pytest.mark.parametrize("config", [TOY_CONFIGS.unet, models.TINY.unet], ids=["toy", "tiny"])
def test_the_rule_says_exactly_which_sizes_run(config):
    torch.manual_seed(0)
    unet = models.build_unet(config).train(False)
    seen = []  # values per group and frame of every GroupNorm input: (N, C, h, w), or (clips, C, frames, h, w) in temporal layers
    for module in unet.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.register_forward_pre_hook(lambda m, args: seen.append(m.num_channels // m.num_groups * args[0].shape[-2:].numel()))
    for width, height, frames in [(64, 64, 1), (64, 64, 2), (72, 64, 1), (64, 72, 1), (128, 64, 1), (64, 64, 3)]:
        seen.clear()
        try:
            with torch.no_grad():
                _forward(unet, config, width, height, frames)
            ran = True
        except ValueError as error:
            assert "Expected more than 1 value per channel" in str(error)
            ran = False
        try:
            models.check_unet_can_run(config, width, height, frames)
            allowed = True
        except InputError:
            allowed = False
        assert allowed == ran, (width, height, frames)
        if ran:  # the derivation: the fewest values a group sees per frame, as measured
            assert models.values_per_norm_group(config, width, height) == min(seen)


def test_toy_model_one_frame_at_64_is_refused_with_the_fix():
    with pytest.raises(InputError, match="cannot make a single frame at 64x64.*32 channels at 1x1.*2 or more frames, or width 72 or height 72"):
        models.check_unet_can_run(TOY_CONFIGS.unet, 64, 64, 1)
    models.check_unet_can_run(TOY_CONFIGS.unet, 64, 64, 1, clips=2)  # two clips share the batch: PyTorch runs it


def test_full_size_unet_runs_every_size_and_frame_count():
    with torch.device("meta"):
        unet = models.build_unet(models.FULL.unet)
    norms = [m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert {m.num_groups for m in norms} == {models.UNET_NORM_GROUPS}
    assert min(m.num_channels for m in norms) == 320  # 10 values per group even at 1x1
    for width, height in [(64, 64), (72, 64), (1024, 576), (64, 16384)]:
        assert models.values_per_norm_group(models.FULL.unet, width, height) >= 10
        models.check_unet_can_run(models.FULL.unet, width, height, 1)
