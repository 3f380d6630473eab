"""SF-V LoRA files: written in the layout ComfyUI's LoRA loader applies to an SVD model, read
back strictly, merged into the UNet, and extracted from a full fine-tune.

"ComfyUI" here is an exact re-implementation of its LoRA path (comfy/lora.py
model_lora_keys_unet + load_lora, comfy/weight_adapter/lora.py LoRAAdapter.calculate_weight,
ComfyUI 0.3.6x) applied to the single file's own tensors, so the test compares the pack with
what native ComfyUI computes on svd.safetensors, not with itself.
"""

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sfv_core import checkpoints as ck
from sfv_core import lora
from sfv_core.cli import main
from sfv_core.convert import UNET_ROOT
from sfv_core.errors import CheckpointError, InputError
from sfv_core.models import TINY, build_random_model
from sfv_core.pipeline import SFVPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

# One of each kind of layer: spatial and temporal attention (Linear), the transformer's proj_in,
# a feed-forward, a 3x3 resnet conv, a 1x1 shortcut conv, the temporal resnets' (3,1,1) Conv3d, conv_in.
LAYERS = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 2,
    "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn2.to_k": 3,
    "mid_block.attentions.0.proj_in": 2,
    "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj": 4,
    "down_blocks.2.resnets.0.spatial_res_block.conv1": 2,
    "up_blocks.2.resnets.1.spatial_res_block.conv_shortcut": 3,
    "down_blocks.1.resnets.0.temporal_res_block.conv2": 2,
    "conv_in": 1,
}


def random_layers(unet, seed=0, alpha=4.0) -> dict[str, lora.LoraLayer]:
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, rank in LAYERS.items():
        shape = unet.get_submodule(name).weight.shape
        down = torch.randn(rank, *shape[1:], generator=generator) * 0.1  # PEFT's lora_A layout
        up = torch.randn(shape[0], rank, *(1,) * (len(shape) - 2), generator=generator) * 0.1
        layers[name] = lora.LoraLayer(down, up, alpha)
    return layers


def comfyui_apply(model_state: dict, lora_state: dict, strength: float) -> dict:
    """ComfyUI's LoRA path on its model state dict (keys diffusion_model.*): returns the patched
    weights and fails on any LoRA key it would log as 'lora key not loaded'."""
    key_map = {}
    for key in model_state:
        if key.startswith("diffusion_model.") and key.endswith(".weight"):
            module = key[len("diffusion_model."):-len(".weight")]
            key_map["lora_unet_" + module.replace(".", "_")] = key
            key_map[key[:-len(".weight")]] = key
    patched, loaded = dict(model_state), set()
    for name, weight_key in key_map.items():
        if f"{name}.lora_up.weight" not in lora_state:
            continue
        up, down = lora_state[f"{name}.lora_up.weight"], lora_state[f"{name}.lora_down.weight"]
        alpha = lora_state[f"{name}.alpha"].item() if f"{name}.alpha" in lora_state else None
        loaded |= {f"{name}.lora_up.weight", f"{name}.lora_down.weight", f"{name}.alpha"}
        weight = model_state[weight_key].to(torch.float32, copy=True)
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        diff = torch.mm(up.float().flatten(start_dim=1), down.float().flatten(start_dim=1)).reshape(weight.shape)
        weight += ((strength * scale) * diff).type(weight.dtype)
        patched[weight_key] = weight.to(model_state[weight_key].dtype)
    assert set(lora_state) <= loaded, f"ComfyUI would not load {sorted(set(lora_state) - loaded)}"
    return patched


@pytest.fixture(scope="module")
def tiny():
    return build_random_model(TINY)


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    single = ck.save_single_file(tiny, root / "svd_tiny.safetensors")
    lora_file = lora.save_lora(root / "sfv_lora.safetensors", random_layers(tiny.unet), tiny.unet.config, {"trained_by": "test"})
    return {"root": root, "single": single, "lora": lora_file}


def unet_of_single_file(state: dict) -> dict:
    """ComfyUI's view of the UNet: the single file's model.diffusion_model.* as diffusion_model.*."""
    return {key.removeprefix("model."): tensor for key, tensor in state.items() if key.startswith(UNET_ROOT)}


@pytest.mark.parametrize("strength", [1.0, 0.7, -1.5])
def test_pack_merge_equals_comfyui_on_the_single_file(files, strength):
    expected = comfyui_apply(unet_of_single_file(load_file(files["single"])), load_file(files["lora"]), strength)

    model = ck.load_model(files["single"])
    merged = lora.apply_lora_file(model, files["lora"], strength)
    ours = unet_of_single_file(ck.model_to_single_file_state_dict(merged))
    assert ours.keys() == expected.keys()
    base = unet_of_single_file(load_file(files["single"]))
    changed = {key for key in ours if not torch.equal(ours[key], base[key])}
    assert len(changed) == len(LAYERS)  # every layer of the LoRA changed, nothing else
    for key in ours:
        assert torch.equal(ours[key], expected[key]), key  # same float32 operations in the same order


def test_file_layout_and_metadata(files, tiny):
    state = load_file(files["lora"])
    assert len(state) == 3 * len(LAYERS) and all(key.startswith("diffusion_model.") for key in state)
    # The temporal resnet's Conv3d keeps its (3, 1, 1) kernel in lora_down; lora_up is 1x1x1.
    conv3d = "diffusion_model.input_blocks.3.0.time_stack.out_layers.3"
    assert state[conv3d + ".lora_down.weight"].shape == (2, 32, 3, 1, 1) and state[conv3d + ".lora_up.weight"].shape == (32, 2, 1, 1, 1)
    assert state["diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.alpha"].item() == 4.0
    with safe_open(files["lora"], "pt") as handle:
        metadata = handle.metadata()
    assert metadata["sfv_lora"] == "1" and metadata["rank"] == "mixed" and metadata["alpha"] == "4" and metadata["trained_by"] == "test"
    assert json.loads(metadata["targets"]) == sorted(LAYERS)


def test_read_back_exactly_in_both_comfyui_name_forms(files, tiny, tmp_path):
    written = random_layers(tiny.unet)
    for path in (files["lora"], rename_to_kohya(files["lora"], tmp_path / "kohya.safetensors")):
        read = lora.read_lora(path, tiny.unet)
        assert read.keys() == written.keys()
        for name, layer in read.items():
            assert torch.equal(layer.down, written[name].down) and torch.equal(layer.up, written[name].up) and layer.alpha == 4.0


def rename_to_kohya(source, target):
    state = load_file(source)
    renamed = {}
    for key, tensor in state.items():
        module, part = key.removeprefix("diffusion_model.").rsplit(".lora_", 1) if ".lora_" in key else key.removeprefix("diffusion_model.").rsplit(".", 1)
        suffix = f".lora_{part}" if ".lora_" in key else f".{part}"
        renamed["lora_unet_" + module.replace(".", "_") + suffix] = tensor
    save_file(renamed, target)
    return target


def test_merge_follows_lora_delta_and_keeps_dtype(tiny):
    unet = build_random_model(TINY).unet.to(torch.bfloat16)
    layers = random_layers(unet)
    before = {name: unet.get_submodule(name).weight.clone() for name in layers}
    lora.merge_lora(unet, layers, 0.5)
    for name, layer in layers.items():
        weight = unet.get_submodule(name).weight
        assert weight.dtype == torch.bfloat16
        assert torch.equal(weight, (before[name].float() + lora.lora_delta(layer, weight.shape, 0.5)).to(torch.bfloat16))


def test_lora_on_top_of_an_sfv_unet(files, tmp_path):
    tuned = build_random_model(TINY, seed=3).unet
    unet_file = ck.save_unet_file(tuned, tmp_path / "sfv_unet.safetensors", layout="sgm")
    pipe = SFVPipeline.from_files(str(files["single"]), str(unet_file), device="cpu", sfv_lora=str(files["lora"]), lora_strength=0.5)
    expected = build_random_model(TINY, seed=3).unet
    lora.merge_lora(expected, lora.read_lora(files["lora"], expected), 0.5)
    for key, tensor in pipe.model.unet.state_dict().items():
        assert torch.equal(tensor, expected.state_dict()[key]), key
    assert any("LoRA" in note for note in pipe.model.notes)


# --- strict reading -------------------------------------------------------------------------


def fake_lora(path, shapes: dict) -> str:
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, path)
    return str(path)


def refusal(path, unet) -> str:
    with pytest.raises(CheckpointError) as caught:
        lora.read_lora(path, unet)
    return str(caught.value)


def test_sd15_lora_is_refused_naming_what_it_targets(tmp_path, tiny):
    path = fake_lora(tmp_path / "sd15.safetensors", {
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": (3072, 4),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4),
    })
    message = refusal(path, tiny.unet)
    assert "it targets the text encoder of an image model such as SD1.5" in message and "diffusers names" in message
    assert "768-wide context (SD1.x's text encoder)" in message
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in message  # unmatched keys by name
    assert "SD1.5, SDXL" in message


def test_sdxl_lora_with_existing_names_but_other_widths_is_refused(tmp_path, tiny):
    # SGM names this UNet has, with SDXL's shapes: 2048-wide context, 640-wide layers.
    block = "lora_unet_input_blocks_1_1_"
    path = fake_lora(tmp_path / "sdxl.safetensors", {
        block + "transformer_blocks_0_attn2_to_k.lora_down.weight": (8, 2048),
        block + "transformer_blocks_0_attn2_to_k.lora_up.weight": (640, 8),
        block + "proj_in.lora_down.weight": (8, 640),
        block + "proj_in.lora_up.weight": (640, 8),
        block + "proj_in.alpha": (),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (8, 768),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": (3072, 8),
    })
    message = refusal(path, tiny.unet)
    assert "two text encoders of an SDXL model" in message and "2048-wide context (SDXL's two text encoders)" in message
    assert f"{block}proj_in: lora_down [8, 640] takes 640 input features, the layer [32, 32] takes 32" in message


def test_rank_or_width_that_does_not_fit_and_incomplete_layers(tmp_path, tiny):
    name = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"
    path = fake_lora(tmp_path / "misfit.safetensors", {
        name + ".lora_down.weight": (4, 48), name + ".lora_up.weight": (32, 4),
        "diffusion_model.input_blocks.1.1.proj_out.lora_down.weight": (4, 32), "diffusion_model.input_blocks.1.1.proj_out.lora_up.weight": (32, 2),
        "diffusion_model.input_blocks.1.1.proj_in.lora_down.weight": (4, 32),
        "diffusion_model.input_blocks.9.1.proj_in.lora_down.weight": (4, 32),
        "diffusion_model.input_blocks.1.1.proj_in.dora_scale": (32, 1),
    })
    message = refusal(path, tiny.unet)
    assert f"{name}: lora_down [4, 48] takes 48 input features, the layer [32, 32] takes 32" in message
    assert "lora_down [4, 32] has rank 4 but lora_up [32, 2] has rank 2" in message
    assert "its layer has no lora_up factor" in message
    assert "keys naming no layer of this UNet" in message and "input_blocks.9.1.proj_in.lora_down.weight" in message
    assert "no DoRA" in message and "proj_in.dora_scale" in message


def test_truncated_full_weights_and_missing_files_are_named(files, tmp_path, tiny):
    data = files["lora"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    assert "truncated" in refusal(cut, tiny.unet)
    unet_file = ck.save_unet_file(tiny.unet, tmp_path / "unet.safetensors")
    assert "is not a LoRA" in refusal(unet_file, tiny.unet) and "sfv_unet" in refusal(unet_file, tiny.unet)
    assert "models/loras" in refusal(tmp_path / "gone.safetensors", tiny.unet)
    damaged = load_file(files["lora"])
    next(tensor for key, tensor in damaged.items() if key.endswith("lora_up.weight"))[0, 0] = math.nan
    save_file(damaged, tmp_path / "nan.safetensors")
    assert "NaN or infinite" in refusal(tmp_path / "nan.safetensors", tiny.unet)


@pytest.mark.parametrize("strength", [math.nan, math.inf, 4.5])
def test_strength_out_of_range_is_refused(tiny, strength):
    with pytest.raises(InputError, match="lora strength must be between -4.0 and 4.0"):
        lora.merge_lora(build_random_model(TINY).unet, random_layers(tiny.unet), strength)


def test_check_lora_decides_from_headers_alone(files, tmp_path, monkeypatch):
    base = ck.inspect_full_model(files["single"])

    def no_reading(*args, **kwargs):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(ck.Weights, "reader", no_reading)
    assert lora.check_lora(files["lora"], base) == sorted(LAYERS)
    sdxl = fake_lora(tmp_path / "sdxl.safetensors", {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (8, 1280)})
    with pytest.raises(CheckpointError, match="SDXL"):
        lora.check_lora(sdxl, base)


def test_save_refuses_layers_the_unet_does_not_have(tiny, tmp_path):
    layers = random_layers(tiny.unet)
    with pytest.raises(ValueError, match="conv_norm_out"):
        lora.save_lora(tmp_path / "x.safetensors", {"conv_norm_out": layers["conv_in"]}, tiny.unet.config)
    with pytest.raises(ValueError, match="takes 8 input features"):
        lora.save_lora(tmp_path / "x.safetensors", {"mid_block.attentions.0.proj_in": layers["conv_in"]}, tiny.unet.config)
    assert not (tmp_path / "x.safetensors").exists()


# --- the command line -----------------------------------------------------------------------


def test_generate_with_a_lora_equals_the_merged_model(files, tmp_path):
    out = ["--width", "64", "--height", "64", "--frames", "3", "--device", "cpu"]
    assert main(["generate", "--checkpoint", str(files["single"]), *out, "--sfv-lora", str(files["lora"]), "--lora-strength", "0.5",
                 "--out", str(tmp_path / "clip.webp"), "--save-latent", str(tmp_path / "lora.latent")]) == 0
    from sfv_core.video_io import load_latent

    pipe = SFVPipeline.from_files(str(files["single"]), device="cpu")
    lora.merge_lora(pipe.model.unet, lora.read_lora(files["lora"], pipe.model.unet), 0.5)
    cond, _ = pipe.condition(_start_image(), width=64, height=64, num_frames=3, fps=7, motion_bucket_id=127, augmentation=0.02)
    assert torch.equal(load_latent(tmp_path / "lora.latent"), pipe.sample(cond, 0))


def _start_image():
    from sfv_core.assets import DEMO_IMAGE
    from sfv_core.conditioning import to_rgb
    from sfv_core.video_io import load_image

    return to_rgb(load_image(DEMO_IMAGE, fit=(64, 64)))


@pytest.mark.parametrize("args, message", [
    (["--lora-strength", "nan"], "--lora-strength must be between -4.0 and 4.0"),
    (["--lora-strength", "0.5"], "needs a LoRA to scale"),
    (["--sfv-lora", "SDXL"], "two text encoders of an SDXL model"),
    (["--sfv-lora", "MISSING"], "does not exist"),
])
def test_bad_lora_input_is_refused_before_any_model_loads(files, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(SFVPipeline, "from_files", lambda *a, **k: pytest.fail("the model was loaded before the input was refused"))
    sdxl = fake_lora(tmp_path / "sdxl.safetensors", {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (8, 768)})
    args = [{"SDXL": sdxl, "MISSING": str(tmp_path / "gone.safetensors")}.get(arg, arg) for arg in args]
    assert main(["generate", "--checkpoint", str(files["single"]), "--width", "64", "--height", "64", "--out", str(tmp_path / "c.webp"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# --- extraction -----------------------------------------------------------------------------

SINGULAR_VALUES = torch.tensor([4.0, 3.0, 2.0, 1.0]) * 0.05
EXTRACTED = ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
             "down_blocks.2.resnets.0.spatial_res_block.conv1",
             "up_blocks.2.resnets.1.temporal_res_block.conv1")


def tuned_unet(seed=0):
    """The tiny UNet plus an exact rank-4 change (singular values SINGULAR_VALUES) in three
    layers (a Linear, a 3x3 conv, a Conv3d) and a changed bias, which no LoRA can hold."""
    unet = build_random_model(TINY, seed=seed).unet
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in EXTRACTED:
            weight = unet.get_submodule(name).weight
            out, inputs = weight.shape[0], weight[0].numel()
            left = torch.linalg.qr(torch.randn(out, 4, generator=generator)).Q
            right = torch.linalg.qr(torch.randn(inputs, 4, generator=generator)).Q
            weight += (left * SINGULAR_VALUES @ right.T).reshape(weight.shape)
        unet.conv_in.bias += 0.01
    return unet


def extract(files, tmp_path, rank, *extra, layout="sgm"):
    tuned = ck.save_unet_file(tuned_unet(), tmp_path / "tuned.safetensors", layout=layout)
    out = tmp_path / f"rank{rank}.safetensors"
    assert main(["extract-lora", "--base", str(files["single"]), "--tuned", str(tuned), "--rank", str(rank), "--out", str(out), *extra]) == 0
    return out, json.loads(out.with_suffix(".extraction.json").read_text())


def test_extraction_at_the_change_rank_reconstructs_the_fine_tune(files, tmp_path, capsys):
    out, report = extract(files, tmp_path, 4, "--dtype", "fp32")
    printed = capsys.readouterr().out
    assert [layer["module"] for layer in report["layers"]] == list(EXTRACTED) and report["relative_error"] < 1e-5
    assert report["unchanged_layers_skipped"] == len(lora.unet_targets(tuned_unet())) - len(EXTRACTED)
    assert report["changed_tensors_not_in_lora"] == ["conv_in.bias"]
    assert "total" in printed and "conv_in.bias" not in printed and "1 changed tensors a LoRA cannot hold" in printed

    base = build_random_model(TINY).unet
    lora.merge_lora(base, lora.read_lora(out, base))
    expected = tuned_unet().state_dict()
    for key, tensor in base.state_dict().items():
        if key != "conv_in.bias":
            torch.testing.assert_close(tensor, expected[key], rtol=0, atol=1e-5, msg=key)


def test_extraction_below_the_change_rank_reports_the_expected_error(files, tmp_path):
    _, report = extract(files, tmp_path, 2, layout="diffusers")  # stored in fp16, the default
    expected = float(SINGULAR_VALUES[2:].norm() / SINGULAR_VALUES.norm())  # what a rank-2 SVD leaves
    for layer in report["layers"]:
        assert layer["rank"] == 2 and layer["relative_error"] == pytest.approx(expected, abs=2e-3)
    assert report["relative_error"] == pytest.approx(expected, abs=2e-3)


def test_rank_above_a_layer_is_clipped_with_a_note(tiny):
    layers, report = lora.extract_lora(tiny.unet.state_dict(), tuned_unet().state_dict(), 64)
    fits = {fit.module: fit for fit in report.layers}
    assert fits[EXTRACTED[0]].rank == 32 and "clipped to 32" in fits[EXTRACTED[0]].note  # a 32 x 32 Linear
    assert fits[EXTRACTED[1]].rank == 64 and fits[EXTRACTED[1]].note == ""  # a 64 x (32*3*3) conv
    assert report.relative_error < 1e-5 and layers[EXTRACTED[2]].down.shape == (32, 32, 3, 1, 1)


@pytest.mark.parametrize("args, message", [
    (["--rank", "0"], "--rank must be between 1 and 4096"),
    (["--out", "lora.txt"], "give a name ending in .safetensors"),
    (["--tuned", "TOY"], "different architecture than the base model"),
    (["--base", "MISSING"], "does not exist"),
    (["--tuned", "BASE"], "there is no change to extract"),
])
def test_extract_lora_bad_input_is_one_clear_line(files, tmp_path, capsys, args, message):
    from sfv_core.assets import TOY_CHECKPOINT

    names = {"TOY": str(TOY_CHECKPOINT), "MISSING": str(tmp_path / "gone.safetensors"), "BASE": str(files["single"])}
    given = dict(zip(args[::2], [names.get(value, value) for value in args[1::2]]))
    options = {"--base": str(files["single"]), "--tuned": str(files["single"]), "--rank": "4", "--out": str(tmp_path / "x.safetensors")} | given
    if "--tuned" not in given:
        options["--tuned"] = str(ck.save_unet_file(tuned_unet(), tmp_path / "tuned.safetensors"))
    assert main(["extract-lora", *[part for pair in options.items() for part in pair]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


# --- the SFV Loader node --------------------------------------------------------------------


def test_loader_node_merges_a_lora_from_either_folder(files, tmp_path, monkeypatch):
    from test_nodes import PACK, RUNTIME, run_node

    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "svd_tiny.safetensors").symlink_to(files["single"])
    lora.save_lora(root / "loras" / "a_lora.safetensors", random_layers(build_random_model(TINY).unet), TINY.unet)
    lora.save_lora(root / "sfv" / "b_lora.safetensors", random_layers(build_random_model(TINY).unet, seed=1), TINY.unet)
    fake_lora(root / "loras" / "sdxl.safetensors", {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (8, 768)})
    monkeypatch.setattr(RUNTIME, "_fallback_models_root", str(root))
    optional = PACK.NODE_CLASS_MAPPINGS["SFVLoader"].INPUT_TYPES()["optional"]
    assert optional["sfv_lora"][0] == ["none", "a_lora.safetensors", "b_lora.safetensors", "sdxl.safetensors"]
    assert optional["sfv_lora"][1]["default"] == "none" and optional["lora_strength"][1]["default"] == 1.0

    inputs = dict(checkpoint="svd_tiny.safetensors", sfv_unet="none", dtype="fp32", attention="sdpa")
    for name, strength in (("a_lora.safetensors", 0.5), ("b_lora.safetensors", 1.0)):
        (model,) = run_node("SFVLoader", **inputs, sfv_lora=name, lora_strength=strength)
        expected = ck.load_model(files["single"])
        lora.merge_lora(expected.unet, lora.read_lora(root / ("loras" if name.startswith("a") else "sfv") / name, expected.unet), strength)
        actual = model.model.unet.state_dict()
        assert all(torch.equal(tensor, actual[key]) for key, tensor in expected.unet.state_dict().items())
    import sys

    from test_nodes import PACK_NAME

    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded before the LoRA was checked")

    with monkeypatch.context() as patched:  # refused from the headers, before the model loads
        patched.setattr(sys.modules[f"{PACK_NAME}.sfv_core.checkpoints"], "load_model", no_loading)
        with pytest.raises(ValueError, match="two text encoders of an SDXL model"):
            run_node("SFVLoader", **inputs, sfv_lora="sdxl.safetensors")
    with pytest.raises(ValueError, match="lora_strength must be between"):
        run_node("SFVLoader", **inputs, sfv_lora="a_lora.safetensors", lora_strength=math.nan)


def test_peft_state_converts_to_the_same_file(tiny, files, tmp_path):
    layers = random_layers(tiny.unet)
    peft = {}
    for name, layer in layers.items():
        peft[f"base_model.model.{name}.lora_A.default.weight"] = layer.down
        peft[f"base_model.model.{name}.lora_B.default.weight"] = layer.up
    converted = lora.save_lora(tmp_path / "peft.safetensors", lora.peft_layers(peft, 4.0), tiny.unet.config, {"trained_by": "test"})
    assert load_file(converted).keys() == load_file(files["lora"]).keys()
    assert all(torch.equal(a, load_file(files["lora"])[key]) for key, a in load_file(converted).items())
    with pytest.raises(ValueError, match="only one of lora_A / lora_B"):
        lora.peft_layers({"unet.conv_in.lora_A.weight": layers["conv_in"].down}, 4.0)


def test_a_lora_with_no_temporal_layer_is_loaded_with_a_warning(tiny, tmp_path, caplog):
    spatial = {name: layer for name, layer in random_layers(tiny.unet).items() if "temporal" not in name}
    path = lora.save_lora(tmp_path / "spatial.safetensors", spatial, tiny.unet.config)
    assert lora.read_lora(path, tiny.unet).keys() == spatial.keys()
    assert "changes no temporal layer" in caplog.text
