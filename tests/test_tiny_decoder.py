import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from sfv_core import tiny_decoder as tiny
from sfv_core.errors import CheckpointError, InputError
from sfv_core.models import TINY, build_random_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_decoder(config=tiny.TEST_CONFIG, seed=0):
    torch.manual_seed(seed)
    decoder = tiny.TinyDecoder(config).train(False)
    for level in decoder.levels:  # the end convs start at zero (no effect): give them weights to test
        for end in level.memory.ends:
            torch.nn.init.normal_(end.weight, std=0.2)
            torch.nn.init.normal_(end.bias, std=0.2)
    return decoder


@pytest.fixture(scope="module")
def decoder():
    return random_decoder(tiny.TinyDecoderConfig(widths=(16, 16, 8, 8), blocks=(1, 1, 1, 0), end_frames=2))


@pytest.fixture(scope="module")
def latents():
    return torch.randn(2, 11, 4, 3, 5, generator=torch.Generator().manual_seed(1)) * 5  # raw latents: std ~ 1 / 0.18215


def test_full_size_config_is_a_few_million_parameters_at_most():
    assert 0.5e6 < tiny.parameter_count(tiny.TinyDecoder(tiny.FULL_CONFIG)) < 3e6
    assert tiny.FULL_CONFIG.upscale == 8 == tiny.TEST_CONFIG.upscale


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 11])
def test_streaming_gives_the_parallel_frames_with_no_seams(decoder, latents, chunk):
    with torch.no_grad():
        pixels, _ = decoder(latents)
    parallel = ((pixels + 1) / 2).clamp(0, 1).movedim(2, -1)
    streamed = tiny.decode_latents(decoder, latents, chunk_frames=chunk)
    assert streamed.shape == (2, 11, 24, 40, 3)
    assert (streamed - parallel).abs().max() < 1e-5
    # Equal on both sides of every chunk boundary, so no seams; a non-constant output makes
    # the equality mean something.
    assert parallel.std() > 1e-3


def test_frame_t_sees_only_frames_up_to_t(decoder, latents):
    changed = latents.clone()
    changed[:, 6] += 3.0
    before, after = tiny.decode_latents(decoder, latents), tiny.decode_latents(decoder, changed)
    assert torch.equal(before[:, :6], after[:, :6])
    assert (before[:, 6:] - after[:, 6:]).abs().amax(dim=(0, 2, 3, 4)).min() > 0  # memory carries forward


def test_the_last_end_frames_are_drawn_as_the_clip_end_and_others_alike(decoder, latents):
    whole, first_seven = tiny.decode_latents(decoder, latents), tiny.decode_latents(decoder, latents[:, :7])
    assert torch.equal(whole[:, :5], first_seven[:, :5])  # frames <= t only, and not among the last two of either clip
    assert (whole[:, 5:7] - first_seven[:, 5:7]).abs().amax(dim=(0, 2, 3, 4)).min() > 1e-4  # frames 5, 6 end the shorter clip
    plain = tiny.TinyDecoder(dataclasses.replace(decoder.config, end_frames=0)).train(False)
    plain.load_state_dict({k: v for k, v in decoder.state_dict().items() if ".ends." not in k})
    assert torch.equal(tiny.decode_latents(plain, latents)[:, :5], tiny.decode_latents(plain, latents[:, :7])[:, :5])
    assert torch.equal(tiny.decode_latents(plain, latents)[:, 5:7], tiny.decode_latents(plain, latents[:, :7])[:, 5:7])
    with pytest.raises(InputError, match="frames_after counts"):
        decoder(latents, frames_after=-1)


def test_each_clip_has_its_own_memory(decoder, latents):
    both = tiny.decode_latents(decoder, latents, chunk_frames=4)
    alone = tiny.decode_latents(decoder, latents[1:], chunk_frames=4)
    assert (both[1:] - alone).abs().max() < 1e-6


def test_progress_counts_chunks_of_every_clip(decoder, latents):
    calls = []
    tiny.decode_latents(decoder, latents, chunk_frames=4, callback=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]


def test_file_rebuilds_the_config_and_the_frames(decoder, latents, tmp_path):
    config = tiny.TinyDecoderConfig(widths=(8, 8, 8, 8), blocks=(0, 1, 0, 1))
    original = random_decoder(config, seed=3)
    path = tiny.save_tiny_decoder(original, tmp_path / "tiny.safetensors", notes={"teacher": "test"})
    loaded = tiny.load_tiny_decoder(path)
    assert loaded.config == config and tiny.may_be_tiny_decoder_file(path)
    assert torch.equal(tiny.decode_latents(loaded, latents), tiny.decode_latents(original, latents))


def test_a_file_from_before_norm_in_and_end_frames_still_loads_without_them(latents, tmp_path):
    original = random_decoder(tiny.TinyDecoderConfig(widths=(8, 8, 8, 8), blocks=(0, 1, 0, 1), norm_in=False, end_frames=0), seed=4)
    header = json.loads(original.config.to_json())
    del header["norm_in"], header["end_frames"]  # as the first version wrote it
    state = {k: v.contiguous() for k, v in original.state_dict().items()}
    save_file(state, str(tmp_path / "v1.safetensors"), metadata={tiny.FORMAT_KEY: json.dumps(header), "format_version": "1"})
    loaded = tiny.load_tiny_decoder(tmp_path / "v1.safetensors")
    assert loaded.config.norm_in is False and loaded.norm_in is None and loaded.config.end_frames == 0
    assert torch.equal(tiny.decode_latents(loaded, latents), tiny.decode_latents(original, latents))


@pytest.mark.parametrize("chunk", [0, -2])
def test_chunk_sizes_below_one_are_refused(decoder, latents, chunk):
    with pytest.raises(InputError, match="at least 1"):
        tiny.decode_latents(decoder, latents, chunk_frames=chunk)


def test_nan_latents_are_refused(decoder, latents):
    bad = latents.clone()
    bad[0, 3, 1, 1, 1] = float("nan")
    with pytest.raises(InputError, match="NaN or infinite"):
        tiny.decode_latents(decoder, bad)


def test_a_decoder_for_another_latent_space_is_refused(tmp_path):
    vae = build_random_model(TINY).vae
    tiny.check_fits(random_decoder(), vae)
    other = random_decoder(tiny.TinyDecoderConfig(latent_channels=16, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1)))
    loaded = tiny.load_tiny_decoder(tiny.save_tiny_decoder(other, tmp_path / "flux.safetensors"))
    with pytest.raises(CheckpointError, match="16-channel latents .* makes 4-channel latents"):
        tiny.check_fits(loaded, vae)
    wrong_scale = random_decoder(tiny.TinyDecoderConfig(widths=(8, 8, 8), blocks=(1, 1, 1)))
    with pytest.raises(CheckpointError, match="to 4x their size"):
        tiny.check_fits(wrong_scale, vae)


def test_truncated_foreign_and_damaged_files_are_refused(decoder, tmp_path):
    path = tmp_path / "tiny.safetensors"
    tiny.save_tiny_decoder(decoder, path)
    data = path.read_bytes()
    for name, cut in (("header.safetensors", 20), ("body.safetensors", len(data) - 100)):
        (tmp_path / name).write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            tiny.load_tiny_decoder(tmp_path / name)
    save_file({"decoder.conv_in.weight": torch.zeros(1)}, str(tmp_path / "taesd.safetensors"))
    with pytest.raises(CheckpointError, match="not an SF-V tiny decoder"):
        tiny.load_tiny_decoder(tmp_path / "taesd.safetensors")
    assert not tiny.may_be_tiny_decoder_file(tmp_path / "taesd.safetensors")
    assert tiny.may_be_tiny_decoder_file(tmp_path / "header.safetensors")  # listed, so that picking it says it is truncated
    state = {k: v for k, v in decoder.state_dict().items() if k != "conv_out.bias"}
    save_file(state, str(tmp_path / "damaged.safetensors"), metadata={tiny.FORMAT_KEY: decoder.config.to_json()})
    with pytest.raises(CheckpointError, match="missing \\['conv_out.bias'\\]"):
        tiny.load_tiny_decoder(tmp_path / "damaged.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        tiny.load_tiny_decoder(tmp_path / "missing.safetensors")
