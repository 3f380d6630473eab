import pytest
import torch

from sfv_core import decoding
from sfv_core.errors import InputError
from sfv_core.models import TINY, build_random_model


@pytest.fixture(scope="module")
def vae():
    return build_random_model(TINY).vae


def test_chunk_plans_cover_every_frame():
    assert decoding.plan_chunks(14, None) == [(0, 14)]
    assert decoding.plan_chunks(14, 20) == [(0, 14)]
    assert decoding.plan_chunks(14, 5) == [(0, 5), (5, 10), (10, 14)]
    assert decoding.plan_chunks(14, 6, overlap=2) == [(0, 6), (4, 10), (8, 14)]
    with pytest.raises(InputError, match="overlap must be between 0 and"):
        decoding.plan_chunks(14, 4, overlap=4)


def test_blend_weights_sum_to_one_on_every_frame():
    ranges = decoding.plan_chunks(20, 7, overlap=3)
    total = torch.zeros(20)
    for (start, end), weight in zip(ranges, decoding.blend_weights(ranges)):
        total[start:end] += weight
    assert torch.allclose(total, torch.ones(20))


def test_chunked_decode_is_decode_of_each_chunk(vae):
    latents = torch.randn(2, 6, 4, 4, 6)
    frames = decoding.decode_latents(vae, latents, chunk_frames=4)
    assert frames.shape == (2, 6, 32, 48, 3)
    with torch.no_grad():
        second = vae.decode(latents[1, 4:6], num_frames=2).sample
    assert torch.allclose(frames[1, 4:6], ((second + 1) / 2).clamp(0, 1).movedim(1, -1), atol=1e-6)


def test_whole_clip_decode_matches_diffusers_and_overlap_blends(vae):
    latents = torch.randn(1, 6, 4, 4, 4)
    whole = decoding.decode_latents(vae, latents)
    with torch.no_grad():
        reference = vae.decode(latents[0], num_frames=6).sample
    assert torch.allclose(whole[0], ((reference + 1) / 2).clamp(0, 1).movedim(1, -1), atol=1e-6)
    calls = []
    blended = decoding.decode_latents(vae, latents, chunk_frames=4, overlap=2, callback=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert blended.shape == whole.shape and torch.isfinite(blended).all()
    # Frames decoded only by the first chunk equal that chunk's decode.
    with torch.no_grad():
        first = vae.decode(latents[0, :4], num_frames=4).sample
    assert torch.allclose(blended[0, :2], ((first[:2] + 1) / 2).clamp(0, 1).movedim(1, -1), atol=1e-6)


def test_decode_that_cannot_fit_names_the_chunk_size_that_does(vae, monkeypatch):
    per_frame = decoding.decode_bytes_per_frame(vae, 576, 1024)
    monkeypatch.setattr(decoding.memory, "free_bytes", lambda device: 3 * per_frame + 1)
    decoding.check_decode_memory(vae, 3, 576, 1024)
    with pytest.raises(InputError, match=r"frames per chunk \(--decode-chunk\) of 3 or fewer"):
        decoding.check_decode_memory(vae, 14, 576, 1024)
