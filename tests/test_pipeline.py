"""The engine end to end on tiny random models written in the real file formats."""

import numpy as np
import pytest
import torch

from sfv_core import sampling
from sfv_core.checkpoints import save_diffusers_folder, save_single_file
from sfv_core.models import TINY, build_random_model
from sfv_core.pipeline import SFVPipeline

WIDTH, HEIGHT, FRAMES = 128, 64, 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = build_random_model(TINY)
    root = tmp_path_factory.mktemp("checkpoints")
    single, folder = root / "svd_tiny.safetensors", root / "svd_tiny_diffusers"
    save_single_file(model, single)
    save_diffusers_folder(model, folder)
    return {"model": model, "single": single, "diffusers": folder}


@pytest.fixture(scope="module")
def start_image():
    pixels = (np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)
    return pixels


def diffusers_reference(model, pixels, seed, aug_seed, **call):
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from PIL import Image
    from transformers import CLIPImageProcessor

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear", num_train_timesteps=1000,
        prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
        timestep_type="continuous", use_karras_sigmas=True,
    )
    processor = CLIPImageProcessor(size=224, crop_size=224)
    pipe = StableVideoDiffusionPipeline(vae=model.vae, image_encoder=model.image_encoder, unet=model.unet, scheduler=scheduler, feature_extractor=processor)
    pipe.set_progress_bar_config(disable=True)
    eps = sampling.draw_noise((1, FRAMES, 4, HEIGHT // 8, WIDTH // 8), sampling.seeded_generator(seed))
    frames = pipe(
        Image.fromarray(pixels), height=HEIGHT, width=WIDTH, num_frames=FRAMES, min_guidance_scale=1.0, max_guidance_scale=1.0,
        fps=7, motion_bucket_id=127, noise_aug_strength=0.02, generator=torch.Generator().manual_seed(aug_seed), latents=eps,
        output_type="pt", **call,
    ).frames
    return frames[0].permute(0, 2, 3, 1)


@pytest.mark.parametrize("layout", ["single", "diffusers"])
@pytest.mark.parametrize("schedule", [{"sigmas": [700.0, 0.0]}, {"num_inference_steps": 1}])
def test_one_step_equals_diffusers_pipeline(tiny, start_image, layout, schedule):
    pipe = SFVPipeline.from_files(str(tiny[layout]))
    image = torch.from_numpy(start_image).float().div(255).unsqueeze(0)
    ours = pipe.generate(image, seed=42, width=WIDTH, height=HEIGHT, num_frames=FRAMES, fps=7, motion_bucket_id=127, augmentation=0.02, augmentation_seed=5)
    reference = diffusers_reference(tiny["model"], start_image, seed=42, aug_seed=5, **schedule)
    assert ours.frames.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    assert (ours.frames[0] - reference).abs().max().item() < 1e-3


def test_seed_changes_the_clip_and_nothing_else_does(tiny, start_image):
    pipe = SFVPipeline(tiny["model"])
    image = torch.from_numpy(start_image).float().div(255).unsqueeze(0)
    cond, _ = pipe.condition(image, width=WIDTH, height=HEIGHT, num_frames=FRAMES)
    a, b, c = (pipe.sample(cond, seed) for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (1, FRAMES, 4, HEIGHT // 8, WIDTH // 8) and a.device.type == "cpu"


def test_editing_keeps_more_of_the_input_at_lower_denoise(tiny, start_image):
    pipe = SFVPipeline(tiny["model"])
    image = torch.from_numpy(start_image).float().div(255).unsqueeze(0)
    cond, _ = pipe.condition(image, width=WIDTH, height=HEIGHT, num_frames=FRAMES)
    clip = pipe.sample(cond, seed=0)
    # At a low level (denoise 0.05: sigma ~0.01) c_skip ~ 1: the edit returns nearly the input clip.
    distance = {d: (pipe.sample(cond, seed=1, init_latents=clip, denoise=d) - clip).abs().mean().item() for d in (1.0, 0.05)}
    assert distance[0.05] < 0.05 * distance[1.0]
    two_step = pipe.sample(cond, seed=0, steps=2)
    assert two_step.shape == clip.shape and not torch.equal(two_step, clip)
