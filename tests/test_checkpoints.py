"""Checkpoint loading and writing on tiny random models written in the real formats.

Every file here is written to disk (original single file, diffusers folder, SF-V UNet file)
and read back through the public loaders. Bad inputs must give a CheckpointError whose
message names the problem.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from sfv_core import checkpoints as ck
from sfv_core import convert, models
from sfv_core.errors import CheckpointError
from sfv_core.models import FULL, TINY, build_random_model

PARTS = ("unet", "vae", "image_encoder")


# --- helpers ---------------------------------------------------------------------------------


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module):
    a, b = expected.state_dict(), actual.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key].to(a[key].dtype)), key


def assert_same_model(expected: models.SVDModel, actual: models.SVDModel):
    for part in PARTS:
        assert_same_weights(getattr(expected, part), getattr(actual, part))


def rewrite(source, target, edit):
    """Copy a safetensors file through `edit(state_dict) -> state_dict`."""
    state = edit(load_file(source))
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, target)
    return target


def write_fake(path, keys):
    save_file({key: torch.zeros(2) for key in keys}, path)
    return path


def load_error(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as caught:
        ck.load_model(path, **kwargs)
    return str(caught.value)


def other_tiny_unet(seed=7):
    return build_random_model(TINY, seed=seed).unet


@pytest.fixture(scope="module")
def tiny():
    return build_random_model(TINY)


@pytest.fixture(scope="module")
def tiny_files(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    single = ck.save_single_file(tiny, root / "svd_tiny.safetensors")
    folder = ck.save_diffusers_folder(tiny, root / "svd_tiny_diffusers")
    return {"root": root, "single": single, "folder": folder}


# --- round trips -----------------------------------------------------------------------------


def test_single_file_round_trip(tiny, tiny_files):
    loaded = ck.load_model(tiny_files["single"])
    assert_same_model(tiny, loaded)
    assert loaded.native_encoder is None  # both encoders in the file are the same tensors
    assert loaded.source == str(tiny_files["single"])
    for module in loaded.modules.values():
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


def test_diffusers_folder_round_trip(tiny, tiny_files):
    assert_same_model(tiny, ck.load_model(tiny_files["folder"]))


def test_single_file_to_folder_to_single_file_is_identical(tiny_files):
    folder = ck.save_diffusers_folder(ck.load_model(tiny_files["single"]), tiny_files["root"] / "via_folder")
    again = ck.save_single_file(ck.load_model(folder), tiny_files["root"] / "again.safetensors")
    first, second = load_file(tiny_files["single"]), load_file(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_folder_opens_in_diffusers_pipeline(tiny, tiny_files):
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(tiny_files["folder"], local_files_only=True)
    assert_same_model(tiny, pipe)
    assert pipe.scheduler.config.sigma_max == 700.0


def test_float16_load_leaves_no_meta_tensors(tiny_files):
    model = ck.load_model(tiny_files["single"], dtype=torch.float16)
    for module in model.modules.values():
        assert {p.dtype for p in module.parameters()} == {torch.float16}
        assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()])
    position_ids = model.image_encoder.vision_model.embeddings.position_ids
    assert torch.equal(position_ids[0], torch.arange(position_ids.shape[-1]))


@pytest.mark.parametrize("file_dtype, load_dtype", [(torch.float16, torch.float32), (torch.float32, torch.float32), (torch.float32, torch.bfloat16)])
def test_converted_and_kept_tensors_each_own_their_memory(tiny, tmp_path, file_dtype, load_dtype):
    """Converted tensors come out of one reused staging buffer and kept ones are the read buffer
    itself: either way each tensor must be its own contiguous storage, with the file's values."""
    path = ck.save_single_file(tiny, tmp_path / "file.safetensors", dtype=file_dtype)
    model = ck.load_model(path, dtype=load_dtype)
    storages = set()
    for name, module in model.modules.items():
        for key, tensor in module.state_dict().items():
            assert tensor.is_contiguous() and tensor.dtype == load_dtype, f"{name}.{key}"
            storages.add(tensor.untyped_storage().data_ptr())
            expected = getattr(tiny, name).state_dict()[key]
            assert torch.equal(tensor, expected.to(file_dtype).to(load_dtype)), f"{name}.{key}"
    tensor_count = sum(len(module.state_dict()) for module in model.modules.values())
    assert len(storages) == tensor_count


def test_inspect_reads_configs_from_shapes(tiny_files):
    info = ck.inspect_checkpoint(tiny_files["single"])
    assert (info.kind, info.layout, info.dtype) == ("svd_single_file", "sgm", "float32")
    assert (info.unet_config, info.vae_config, info.image_encoder_config) == (TINY.unet, TINY.vae, TINY.image_encoder)
    assert info.encoders == ("conditioning", "first_stage")
    folder = ck.inspect_checkpoint(tiny_files["folder"])
    assert folder.kind == "diffusers_folder" and folder.unet_config["block_out_channels"] == [32, 32, 64, 64]


def test_wider_and_deeper_variant_loads_with_inferred_config(tmp_path):
    unet = models.unet_config(block_out_channels=(64, 64, 128, 128), layers_per_block=2, cross_attention_dim=48, transformer_layers_per_block=2)
    unet["down_block_types"] = ("CrossAttnDownBlockSpatioTemporal",) * 4  # attention on every level
    unet["up_block_types"] = ("CrossAttnUpBlockSpatioTemporal",) * 4
    configs = models.SVDConfigs(
        unet=unet,
        vae=models.vae_config(block_out_channels=(32, 64, 64), layers_per_block=2),
        image_encoder=models.image_encoder_config(hidden_size=64, num_hidden_layers=2, intermediate_size=96, projection_dim=48, image_size=112),
    )
    model = build_random_model(configs, seed=3)
    path = ck.save_single_file(model, tmp_path / "variant.safetensors")
    info = ck.inspect_checkpoint(path)
    assert (info.unet_config, info.vae_config, info.image_encoder_config) == (configs.unet, configs.vae, configs.image_encoder)
    assert_same_model(model, ck.load_model(path))


# --- the single file is the REAL SVD layout --------------------------------------------------


def test_single_file_uses_real_svd_key_names(tiny_files):
    keys = load_file(tiny_files["single"])
    per_level = TINY.unet["layers_per_block"] + 1  # SGM: resnets + one down/upsampler slot per level
    expected = [
        "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight",
        "model.diffusion_model.input_blocks.1.1.time_stack.0.ff_in.net.0.proj.weight",
        "model.diffusion_model.input_blocks.1.1.time_pos_embed.0.weight",
        "model.diffusion_model.input_blocks.1.0.time_mixer.mix_factor",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        f"model.diffusion_model.input_blocks.{per_level}.0.op.weight",
        "model.diffusion_model.middle_block.1.time_stack.0.attn1.to_q.weight",
        "model.diffusion_model.label_emb.0.0.weight",
        # level 0 of the up path has no attention: upsampler at slot 1; level 1 has: slot 2
        f"model.diffusion_model.output_blocks.{per_level - 1}.1.conv.weight",
        f"model.diffusion_model.output_blocks.{2 * per_level - 1}.2.conv.weight",
        "first_stage_model.decoder.up.0.block.0.time_stack.in_layers.2.weight",
        "first_stage_model.decoder.conv_out.time_mix_conv.weight",
        "first_stage_model.decoder.mid.block_1.mix_factor",
        "first_stage_model.decoder.mid.block_2.time_stack.out_layers.3.weight",
        "first_stage_model.encoder.down.0.block.0.conv1.weight",
        "conditioner.embedders.0.open_clip.model.visual.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.3.encoder.encoder.mid.attn_1.q.weight",
        "conditioner.embedders.3.encoder.quant_conv.weight",
    ]
    assert [key for key in expected if key not in keys] == []
    assert not any(key.startswith("first_stage_model.quant_conv") for key in keys)
    assert keys["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)  # LDM 1x1 conv
    assert keys["conditioner.embedders.0.open_clip.model.visual.proj"].shape == (32, 32)
    assert keys["first_stage_model.decoder.conv_out.time_mix_conv.weight"].shape == (3, 3, 3, 1, 1)


DIFFUSERS_ONLY_NAMES = (
    "down_blocks", "up_blocks", "mid_block", "resnets", "attentions", "spatial_res_block", "temporal_res_block",
    "temporal_transformer_blocks", "time_emb_proj", "conv_shortcut", "conv_norm_out", "time_embedding", "add_embedding",
    "linear_1", "group_norm", "downsamplers", "upsamplers", "time_conv_out", "vision_model", "self_attn", "layer_norm1",
    "visual_projection", "pre_layrnorm",
)


def test_full_size_layout_on_meta_device():
    with torch.device("meta"):
        model = models.SVDModel(
            unet=models.build_unet(FULL.unet), vae=models.build_vae(FULL.vae), image_encoder=models.build_image_encoder(FULL.image_encoder)
        )
    single = ck.model_to_single_file_state_dict(model)

    def totals(state, prefixes=("",)):
        tensors = [t for key, t in state.items() if key.startswith(prefixes)]
        return len(tensors), sum(t.numel() for t in tensors)

    unet = totals(model.unet.state_dict())
    assert unet == totals(single, (convert.UNET_ROOT,))
    assert unet[1] == 1_524_623_082  # SVD img2vid's published UNet size
    vae = totals(model.vae.state_dict())
    assert vae == totals(single, (convert.FIRST_STAGE_ROOT + "decoder.", convert.CONDITIONING_ENCODER_ROOT))
    encoder = totals({k: v for k, v in model.vae.state_dict().items() if k.startswith("encoder.")})
    assert encoder == totals(single, (convert.FIRST_STAGE_ROOT + "encoder.",))
    clip_tensors, clip_params = totals(model.image_encoder.state_dict())
    # OpenCLIP stacks q, k, v (weight and bias) into one in_proj per layer: 6 tensors -> 2
    assert totals(single, (convert.CLIP_ROOT,)) == (clip_tensors - 4 * FULL.image_encoder["num_hidden_layers"], clip_params)
    assert len(single) == unet[0] + vae[0] + encoder[0] + clip_tensors - 4 * 32
    assert [key for key in single if any(name in key for name in DIFFUSERS_ONLY_NAMES)] == []
    # and the full-size configs come back from the shapes alone
    entries = {key: ck.TensorEntry(t.dtype, tuple(t.shape)) for key, t in single.items()}
    assert ck.infer_configs(entries) == FULL


# --- VAE encoder policy ----------------------------------------------------------------------


def test_file_without_conditioning_encoder_uses_first_stage_encoder(tiny, tiny_files):
    path = rewrite(tiny_files["single"], tiny_files["root"] / "no_emb3.safetensors",
                   lambda sd: {k: v for k, v in sd.items() if not k.startswith("conditioner.embedders.3.")})
    model = ck.load_model(path)
    assert_same_weights(tiny.vae.encoder, model.vae.encoder)
    assert torch.equal(model.vae.quant_conv.weight[:, :, 0, 0], torch.eye(8))
    assert model.native_encoder is None
    assert any("identity quant_conv" in note for note in model.notes)


def test_file_without_first_stage_encoder_loads(tiny, tiny_files):
    path = rewrite(tiny_files["single"], tiny_files["root"] / "no_fs_encoder.safetensors",
                   lambda sd: {k: v for k, v in sd.items() if not k.startswith("first_stage_model.encoder.")})
    model = ck.load_model(path)
    assert_same_model(tiny, model)
    assert model.native_encoder is None


def test_differing_native_encoder_is_kept_through_both_formats(tmp_path):
    model = build_random_model(TINY, seed=2)
    torch.manual_seed(9)
    model.native_encoder = models.build_native_encoder(TINY.vae).eval()
    single = ck.load_model(ck.save_single_file(model, tmp_path / "two_encoders.safetensors"))
    assert single.native_encoder is not None
    assert_same_weights(model.native_encoder, single.native_encoder)
    assert_same_weights(model.vae, single.vae)
    folder = ck.load_model(ck.save_diffusers_folder(single, tmp_path / "two_encoders"))
    assert_same_weights(model.native_encoder, folder.native_encoder)


def test_tensors_outside_the_model_are_ignored_and_noted(tiny, tiny_files):
    extra = {"denoiser.sigmas": torch.ones(3), "model_ema.decay": torch.ones(1)}
    path = rewrite(tiny_files["single"], tiny_files["root"] / "extras.safetensors", lambda sd: sd | extra)
    model = ck.load_model(path)
    assert_same_model(tiny, model)
    assert any("denoiser.sigmas" in note and "model_ema.decay" in note for note in model.notes)


# --- SF-V UNet files -------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["diffusers", "sgm", "sgm_prefixed", "single_file"])
def test_sfv_unet_file_replaces_the_unet(tiny, tmp_path, layout):
    sfv = build_random_model(TINY, seed=7)
    path = tmp_path / f"sfv_{layout}.safetensors"
    if layout in ("diffusers", "sgm"):
        ck.save_unet_file(sfv.unet, path, layout=layout)
    elif layout == "sgm_prefixed":
        ck.save_unet_file(sfv.unet, tmp_path / "bare.safetensors", layout="sgm")
        rewrite(tmp_path / "bare.safetensors", path, lambda sd: {convert.UNET_ROOT + k: v for k, v in sd.items()})
    else:
        ck.save_single_file(sfv, path)
    if layout != "single_file":
        assert ck.inspect_checkpoint(path).kind == "sfv_unet"
    replaced = ck.load_sfv_unet(path, tiny)
    assert_same_weights(sfv.unet, replaced.unet)
    assert replaced.vae is tiny.vae and replaced.image_encoder is tiny.image_encoder
    assert tiny.unet is not replaced.unet  # the base is left as it was
    assert not any(p.requires_grad for p in replaced.unet.parameters())


def test_sfv_unet_of_another_architecture_is_refused(tiny, tmp_path):
    wider = models.SVDConfigs(unet=models.unet_config(block_out_channels=(64, 64, 128, 128), layers_per_block=1, cross_attention_dim=32),
                              vae=TINY.vae, image_encoder=TINY.image_encoder)
    path = ck.save_unet_file(build_random_model(wider).unet, tmp_path / "wider.safetensors")
    with pytest.raises(CheckpointError, match="different architecture") as caught:
        ck.load_sfv_unet(path, tiny)
    assert "block_out_channels" in str(caught.value) and "(64, 64, 128, 128)" in str(caught.value)


def test_unet_only_file_is_not_a_full_model(tiny, tmp_path):
    path = ck.save_unet_file(tiny.unet, tmp_path / "unet.safetensors", layout="sgm")
    assert "only a UNet" in load_error(path)


# --- bad inputs ------------------------------------------------------------------------------


def test_sd15_checkpoint_is_named(tmp_path):
    path = write_fake(tmp_path / "sd15.safetensors", [
        "model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "first_stage_model.decoder.conv_in.weight",
    ])
    message = load_error(path)
    assert "Stable Diffusion 1" in message and "no temporal layers" in message and "svd.safetensors" in message


def test_sdxl_checkpoint_is_named(tmp_path):
    path = write_fake(tmp_path / "sdxl.safetensors", [
        "model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.ln_final.weight",
    ])
    assert "SDXL" in load_error(path)


def test_lora_is_named(tiny, tmp_path):
    path = write_fake(tmp_path / "lora.safetensors", [
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight", "lora_unet_input_blocks_1_1_proj_in.lora_up.weight",
        "lora_unet_input_blocks_1_1_proj_in.alpha",
    ])
    assert "LoRA" in load_error(path)
    peft = write_fake(tmp_path / "peft.safetensors", ["down_blocks.0.attentions.0.proj_in.lora_A.weight"])
    with pytest.raises(CheckpointError, match="LoRA"):
        ck.load_sfv_unet(peft, tiny)


def test_truncated_file_says_download_again(tiny_files, tmp_path):
    data = tiny_files["single"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    message = load_error(cut)
    assert "truncated" in message and "download it again" in message
    cut.write_bytes(data[:100])  # not even the whole header
    assert "truncated" in load_error(cut)
    with pytest.raises(CheckpointError, match="truncated"):
        ck.inspect_checkpoint(cut)


def test_empty_file(tmp_path):
    (tmp_path / "empty.safetensors").touch()
    assert "empty file" in load_error(tmp_path / "empty.safetensors")


def test_html_page_saved_as_weights(tmp_path):
    (tmp_path / "page.safetensors").write_text("<!DOCTYPE html><html>Sign in to download</html>")
    assert "not a safetensors file" in load_error(tmp_path / "page.safetensors")


def test_pickle_is_refused_without_unpickling(tmp_path, monkeypatch):
    import pickle

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the loader must never unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    ckpt = tmp_path / "svd.ckpt"
    ckpt.write_bytes(b"\x80\x02}q\x00.")
    message = load_error(ckpt)
    assert "pickle" in message and "safetensors" in message
    disguised = tmp_path / "disguised.safetensors"  # a torch.save zip under the wrong name
    disguised.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    assert "pickle" in load_error(disguised)


def test_missing_path_and_incomplete_folder(tiny_files, tmp_path):
    assert "does not exist" in load_error(tmp_path / "nowhere.safetensors")
    folder = shutil.copytree(tiny_files["folder"], tmp_path / "partial")
    shutil.rmtree(folder / "image_encoder")
    message = load_error(folder)
    assert "image_encoder" in message and "missing" in message
    assert "one part of a diffusers folder" in load_error(folder / "unet")


def test_folder_with_pickle_weights_is_refused(tiny_files, tmp_path):
    folder = shutil.copytree(tiny_files["folder"], tmp_path / "bin_folder")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    assert "pickle" in load_error(folder)


def test_strict_load_lists_missing_unexpected_and_misshaped_keys_by_name(tiny_files, tmp_path):
    missing = "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.bias"
    unexpected = "model.diffusion_model.input_blocks.1.0.extra_layer.weight"
    misshaped = "first_stage_model.decoder.conv_in.bias"

    def damage(sd):
        del sd[missing]
        sd[unexpected] = torch.zeros(3)
        sd[misshaped] = torch.zeros(5)
        return sd

    message = load_error(rewrite(tiny_files["single"], tmp_path / "damaged.safetensors", damage))
    assert f"1 missing tensors:\n    {missing}" in message
    assert f"1 unexpected tensors:\n    {unexpected}" in message
    assert f"{misshaped}: file [5], expected [64]" in message


def test_sharded_and_fp16_variant_folder_parts_load(tiny, tiny_files, tmp_path):
    folder = shutil.copytree(tiny_files["folder"], tmp_path / "sharded")
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(unet_file)
    keys = sorted(state)
    shards = {"part-1.safetensors": keys[: len(keys) // 2], "part-2.safetensors": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        save_file({key: state[key] for key in shard_keys}, folder / "unet" / name)
    index = {"weight_map": {key: name for name, shard_keys in shards.items() for key in shard_keys}}
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    unet_file.unlink()
    vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    rewrite(vae_file, folder / "vae" / "diffusion_pytorch_model.fp16.safetensors", lambda sd: {k: v.half() for k, v in sd.items()})
    vae_file.unlink()
    model = ck.load_model(folder)
    assert_same_weights(tiny.unet, model.unet)
    assert torch.allclose(model.vae.decoder.conv_in.weight, tiny.vae.decoder.conv_in.weight, atol=1e-3)


# --- writing ---------------------------------------------------------------------------------


def test_writes_are_atomic(tiny, tmp_path, monkeypatch):
    target = ck.save_single_file(tiny, tmp_path / "model.safetensors")
    before = target.read_bytes()

    def crash_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ck.writing, "save_file", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        ck.save_single_file(tiny, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left


def test_save_with_dtype(tiny, tmp_path):
    path = ck.save_single_file(tiny, tmp_path / "half.safetensors", dtype=torch.float16)
    assert ck.inspect_checkpoint(path).dtypes == {"float16": len(load_file(path))}
    with pytest.raises(CheckpointError, match=".safetensors"):
        ck.save_single_file(tiny, tmp_path / "model.ckpt")


def test_folder_of_an_image_model_is_named(tiny_files, tmp_path):
    folder = shutil.copytree(tiny_files["folder"], tmp_path / "image_unet")
    config_path = folder / "unet" / "config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"_class_name": "UNet2DConditionModel"}))
    message = load_error(folder)
    assert "UNet2DConditionModel" in message and "UNetSpatioTemporalConditionModel" in message
