"""The acceleration policy (decided for made-up devices) and the fast path that runs on the CPU:
torch.compile equal to eager, compiled once per shape, and the fp32 redo of an overflowed decode."""

import copy
import dataclasses
import logging
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from sfv_core import decoding
from sfv_core.acceleration import CompiledCall, FastPath, FastUNet
from sfv_core.errors import InputError
from sfv_core.models import TINY, build_random_model, build_unet, build_vae, unet_config, vae_config
from sfv_core.runtime import DeviceCapabilities, describe, place, plan_runtime, sdpa_backend

CPU, H100, T4 = DeviceCapabilities("cpu"), DeviceCapabilities("cuda", (9, 0)), DeviceCapabilities("cuda", (7, 5))
FRAMES, LATENT_SIZE = 2, 8


def plan(caps, **choices):
    return plan_runtime(torch.device(caps.type), caps, **choices)


def test_cpu_runs_fp32_and_plain_unless_asked():
    runtime = plan(CPU)
    assert (runtime.dtype, runtime.vae_dtype, runtime.compile) == (torch.float32, torch.float32, "off")
    assert not (runtime.cuda_graphs or runtime.channels_last or runtime.tf32)
    assert plan(CPU, compile="max-autotune").compile == "max-autotune"
    assert plan(CPU, dtype="bf16").vae_dtype == torch.bfloat16
    with pytest.raises(InputError, match="fp16 is not supported on the CPU"):
        plan(CPU, vae_dtype="fp16")


def test_ampere_and_newer_run_bf16_tf32_compiled_and_graphed():
    runtime = plan(H100)
    assert (runtime.dtype, runtime.vae_dtype, runtime.compile) == (torch.bfloat16, torch.bfloat16, "default")
    assert runtime.cuda_graphs and runtime.channels_last and runtime.tf32
    assert plan(H100, compile="off").compile == "off"


def test_older_gpus_run_fp16_with_an_fp32_vae_unless_asked():
    runtime = plan(T4)
    assert (runtime.dtype, runtime.vae_dtype, runtime.tf32) == (torch.float16, torch.float32, False)
    assert plan(T4, vae_dtype="fp16").vae_dtype == torch.float16
    other = plan(DeviceCapabilities("mps"))
    assert (other.dtype, other.vae_dtype, other.cuda_graphs, other.compile) == (torch.float16, torch.float32, False, "off")


@torch.no_grad()
def test_channels_last_placement_keeps_the_outputs():
    """A GPU runtime's layout, applied on the CPU: 2D conv weights go NHWC, the temporal Conv3d
    weights (5D, no such layout) stay as they are, and the model computes the same."""
    model = build_random_model(TINY)
    args, kwargs = unet_call(6)
    before, before_frames = model.unet(*args, **kwargs)[0], decoding.vae_decoder(model.vae)(latents(6), FRAMES)
    place(model, dataclasses.replace(plan(CPU), channels_last=True))
    convs = [layer for module in (model.unet, model.vae) for layer in module.modules() if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size != (1, 1)]
    assert convs and all(layer.weight.is_contiguous(memory_format=torch.channels_last) and not layer.weight.is_contiguous() for layer in convs)
    assert any(isinstance(layer, torch.nn.Conv3d) for layer in model.vae.modules())
    torch.testing.assert_close(model.unet(*args, **kwargs)[0], before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decoding.vae_decoder(model.vae)(latents(6), FRAMES), before_frames, atol=1e-5, rtol=1e-5)


def test_unknown_choices_are_refused_with_the_choices():
    with pytest.raises(InputError, match=r"compile must be one of \('auto', 'off', 'default', 'max-autotune'\)"):
        plan(CPU, compile="fast")


def test_the_sdpa_kernel_is_found_and_named_in_the_log_line():
    kernel = sdpa_backend(torch.device("cpu"), torch.float32, 64)
    assert kernel in ("flash", "memory-efficient", "math")
    assert f"SDPA ({kernel})" in describe(plan(CPU))
    assert "eager attention" in describe(plan(CPU, attention="eager"))


# One level instead of TINY's four: the same classes and blocks (spatio-temporal resnets, the
# mid block's spatio-temporal transformer, the temporal decoder), a graph inductor compiles in
# a minute on 2 busy cores rather than several.
@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    unet = build_unet(unet_config(block_out_channels=(32,), layers_per_block=1, cross_attention_dim=32)).train(False)
    vae = build_vae(vae_config(block_out_channels=(32,), layers_per_block=1)).train(False)
    with torch.no_grad():  # as build_random_model: no zero-initialised layer hides a difference
        for parameter in [*unet.parameters(), *vae.parameters()]:
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return unet, vae


def unet_call(seed: int, frames: int = FRAMES):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, frames, 8, LATENT_SIZE, LATENT_SIZE, generator=g)
    return (sample, torch.tensor([1.6])), dict(encoder_hidden_states=torch.randn(1, 1, 32, generator=g), added_time_ids=torch.tensor([[6.0, 127.0, 0.02]]), return_dict=False)


def latents(seed: int, frames: int = FRAMES):
    return torch.randn(frames, 4, LATENT_SIZE, LATENT_SIZE, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_inductor_compiled_unet_and_decoder_equal_eager(small, caplog):
    unet, vae = small
    fast = FastPath(SimpleNamespace(unet=unet, vae=vae), plan(CPU, compile="default"))
    args, kwargs = unet_call(1)
    # One compile thread: no pool of compiler processes to start on a 2-core machine.
    with caplog.at_level(logging.WARNING, logger="sfv"), torch._inductor.config.patch(compile_threads=1):
        compiled_unet = fast.unet(*args, **kwargs)[0]
        compiled_frames = fast.decoder(latents(2), FRAMES)
    # Only a warning means a fall-back; the CLI tests may leave the sfv logger at INFO.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "compiling fell back to eager"
    torch.testing.assert_close(compiled_unet, unet(*args, **kwargs)[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled_frames, decoding.vae_decoder(vae)(latents(2), FRAMES), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_a_new_seed_reuses_the_compiled_graph_and_a_new_size_compiles_once(small):
    unet, vae = small
    unet_compiles, decoder_compiles = CompileCounter(), CompileCounter()
    fast_unet = FastUNet(unet, plan(CPU, compile="default"), backend=unet_compiles)
    decoder = CompiledCall(decoding.vae_decoder(vae), "default", "temporal decoder", backend=decoder_compiles)
    for seed in (1, 2, 3):
        args, kwargs = unet_call(seed)
        fast_unet(*args, **kwargs)
        decoder(latents(seed), FRAMES)
    assert (unet_compiles.frame_count, decoder_compiles.frame_count) == (1, 1)
    args, kwargs = unet_call(4, frames=3)
    fast_unet(*args, **kwargs)
    decoder(latents(4, frames=3), 3)
    assert (unet_compiles.frame_count, decoder_compiles.frame_count) == (2, 2)


def test_cpu_path_has_no_wrappers(small):
    unet, _ = small
    assert FastUNet(unet, plan(CPU)).call is unet


def test_compile_failure_falls_back_to_eager_with_a_warning(caplog):
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    call = CompiledCall(lambda x: x * 2, "default", "UNet", backend=failing_backend)
    with caplog.at_level(logging.WARNING, logger="sfv"):
        assert torch.equal(call(torch.ones(2)), torch.full((2,), 2.0))
    assert "torch.compile of the UNet failed" in caplog.text and "running it uncompiled" in caplog.text


@torch.no_grad()
def test_an_overflowed_reduced_precision_decode_is_redone_in_fp32(small, caplog):
    vae = copy.deepcopy(small[1]).to(torch.bfloat16)
    before = {name: tensor.clone() for name, tensor in vae.state_dict().items()}
    overflowing = lambda z, frames: torch.full((frames, 3, 8 * LATENT_SIZE, 8 * LATENT_SIZE), float("nan"), dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="sfv"):
        pixels = decoding.decode_chunk(vae, overflowing, latents(5).bfloat16(), FRAMES)
    assert pixels.dtype == torch.float32 and torch.isfinite(pixels).all()
    assert "overflowed (NaN/inf): redoing it in fp32" in caplog.text
    assert all(torch.equal(tensor, before[name]) and tensor.dtype == torch.bfloat16 for name, tensor in vae.state_dict().items())
    caplog.clear()
    decoding.decode_chunk(vae, decoding.vae_decoder(vae), latents(5).bfloat16(), FRAMES)
    assert not caplog.records  # a finite decode is kept as it is
