"""The nodes under bad input, by class: the loader's folder walk with symbolic-link loops, a
LATENT's noise mask, non-finite weights and latents. ComfyUI absent, driven as test_nodes drives them."""

from __future__ import annotations

import threading

import pytest
import torch

from sfv_core.checkpoints import save_diffusers_folder, save_single_file
from sfv_core.models import TINY, build_random_model
from test_nodes import FRAMES, LATENT, PACK, RUNTIME, SETTINGS, plain_error, run_node, start_images


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty_models")
    model = build_random_model(TINY, seed=0)
    save_single_file(model, root / "checkpoints" / "tiny_svd.safetensors")
    save_diffusers_folder(model, root / "diffusers" / "nested" / "tiny_svd")
    broken = build_random_model(TINY, seed=0)
    with torch.no_grad():
        next(broken.unet.parameters()).fill_(float("nan"))  # what a damaged download can hold
    save_single_file(broken, root / "checkpoints" / "nan_weights.safetensors")
    RUNTIME.set_models_root(root)
    return root


def loader_choices(timeout: float = 20.0) -> list[str]:
    """SFVLoader's checkpoint list, as /object_info asks for it; fails if the walk does not end."""
    result = []
    worker = threading.Thread(target=lambda: result.append(PACK.NODE_CLASS_MAPPINGS["SFVLoader"].INPUT_TYPES()), daemon=True)
    worker.start()
    worker.join(timeout)
    assert result, "INPUT_TYPES did not return: the folder walk loops"
    return result[0]["required"]["checkpoint"][0]


@pytest.mark.parametrize("links", [
    [("diffusers/self", "."), ],
    [("diffusers/nested/up", "..")],
    [("diffusers/a", "b"), ("diffusers/b", "a")],  # a loop of dangling links
    [("diffusers/nested/tiny_svd/unet/back", "../../.."), ("diffusers/twin", "nested")],
])
def test_the_loader_list_ends_and_lists_each_folder_once_with_link_loops(root, links):
    made = []
    for name, target in links:
        (root / name).symlink_to(target)
        made.append(root / name)
    try:
        choices = loader_choices()
    finally:
        for link in made:
            link.unlink()
    folders = [c for c in choices if c.startswith("[diffusers]")]
    assert "[diffusers] nested/tiny_svd" in folders and len(folders) == len(set(folders))


@pytest.fixture(scope="module")
def model(root):
    (sfv_model,) = run_node("SFVLoader", checkpoint="tiny_svd.safetensors", sfv_unet="none", dtype="auto", attention="sdpa")
    return sfv_model


def masked_latent(mask: torch.Tensor) -> dict:
    samples = torch.randn(FRAMES, *LATENT, generator=torch.Generator().manual_seed(5))
    return {"samples": samples, "noise_mask": mask}


# (the mask as Set Latent Noise Mask stores it, the latent-size region it keeps)
LEFT_KEPT = torch.zeros(LATENT[1], LATENT[2], dtype=torch.bool)
LEFT_KEPT[:, : LATENT[2] // 2] = True


@pytest.mark.parametrize("mask", [
    (~LEFT_KEPT).float(),  # latent size, one for all frames
    (~LEFT_KEPT).float().repeat_interleave(8, 0).repeat_interleave(8, 1).unsqueeze(0),  # pixel size (1, H, W)
    (~LEFT_KEPT).float().expand(FRAMES, 1, -1, -1).clone(),  # one per frame
])
@pytest.mark.parametrize("steps", [1, 2])
def test_a_noise_mask_re_renders_only_the_masked_region(model, mask, steps):
    conditioning, _ = run_node("SFVImageConditioner", sfv_model=model, image=start_images(1), **SETTINGS)
    latent = masked_latent(mask)
    (out,) = run_node("SFVOneStepSampler", sfv_model=model, conditioning=conditioning, seed=1, steps=steps, latent=latent, denoise=0.667)
    kept, changed = out["samples"][..., LEFT_KEPT], latent["samples"][..., LEFT_KEPT]
    assert torch.allclose(kept, changed, atol=1e-5)
    assert not torch.allclose(out["samples"][..., ~LEFT_KEPT], latent["samples"][..., ~LEFT_KEPT], atol=1e-2)


@pytest.mark.parametrize("mask, words", [(torch.ones(2, LATENT[1], LATENT[2]), "noise_mask has 2 frames"), (torch.tensor(1.0), "not a mask image"), (torch.full((8, 8), float("nan")), "NaN")])
def test_a_mask_that_does_not_fit_is_a_clear_error(model, mask, words):
    conditioning, _ = run_node("SFVImageConditioner", sfv_model=model, image=start_images(1), **SETTINGS)
    with pytest.raises(ValueError, match=words) as excinfo:
        run_node("SFVOneStepSampler", sfv_model=model, conditioning=conditioning, seed=1, steps=1, latent=masked_latent(mask), denoise=0.5)
    plain_error(excinfo)


def test_damaged_weights_are_named_not_a_black_clip(root):
    (broken,) = run_node("SFVLoader", checkpoint="nan_weights.safetensors", sfv_unet="none", dtype="auto", attention="sdpa")
    conditioning, _ = run_node("SFVImageConditioner", sfv_model=broken, image=start_images(1), **SETTINGS)
    with pytest.raises(ValueError, match="sampling produced NaN or infinite values: the weights may be damaged") as excinfo:
        run_node("SFVOneStepSampler", sfv_model=broken, conditioning=conditioning, seed=0, steps=1)
    plain_error(excinfo)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_latent_is_refused_by_the_decoder_and_the_sampler(model, bad):
    samples = torch.zeros(FRAMES, *LATENT)
    samples[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="latent to decode holds NaN or infinite"):
        run_node("SFVTemporalVAEDecode", sfv_model=model, samples={"samples": samples}, frames_per_chunk=0, overlap=0, frames_per_clip=0)
    conditioning, _ = run_node("SFVImageConditioner", sfv_model=model, image=start_images(1), **SETTINGS)
    with pytest.raises(ValueError, match="input latent holds NaN or infinite"):
        run_node("SFVOneStepSampler", sfv_model=model, conditioning=conditioning, seed=0, steps=1, latent={"samples": samples}, denoise=0.5)
