import pytest
import torch

from sfv_core import conditioning
from sfv_core.errors import InputError
from sfv_core.models import TINY, build_random_model


@pytest.fixture(scope="module")
def model():
    return build_random_model(TINY)


def test_grey_and_rgba_become_rgb():
    grey = torch.rand(1, 8, 8, 1)
    assert torch.equal(conditioning.to_rgb(grey), grey.expand(-1, -1, -1, 3))
    rgba = torch.rand(2, 8, 8, 4)
    rgba[..., 3] = 0.0  # fully transparent -> white background
    assert torch.equal(conditioning.to_rgb(rgba), torch.ones(2, 8, 8, 3))
    assert conditioning.to_rgb(torch.rand(8, 8, 3)).shape == (1, 8, 8, 3)
    with pytest.raises(InputError, match="batch, height, width, channels"):
        conditioning.to_rgb(torch.rand(1, 8, 8, 5))


@pytest.mark.parametrize("width, height, frames, message", [
    (100, 64, 14, "Use 96 or 104"), (64, 60, 14, r"\(width 64 is fine\).*Use 64\."), (20, 64, 14, r"Use 64\."), (64, 64, 0, "between 1 and 4096"),
    (0, 64, 14, "width must be between 64 and 16384"), (64, -8, 14, "height must be between 64"), (16392, 64, 14, "between 64 and 16384"),
    (64, 64, 5000, "frames must be between 1 and 4096"), (64.5, 64, 14, "width must be a whole number"), (64, 64, float("nan"), "frames must be a whole number between"),
])
def test_bad_sizes_name_the_fix(width, height, frames, message):
    with pytest.raises(InputError, match=message):
        conditioning.check_video_size(width, height, frames)


def _wide_image_with_red_edges():
    image = torch.full((1, 32, 64, 3), 0.5)
    image[:, :, :8] = torch.tensor([1.0, 0.0, 0.0])  # left eighth red
    return image


def test_resize_modes():
    image = _wide_image_with_red_edges()
    crop = conditioning.resize_images(image, 32, 32, "crop")
    assert crop.shape == (1, 3, 32, 32) and crop[:, 0].max() < 0.6  # red edge trimmed away
    stretch = conditioning.resize_images(image, 32, 32, "stretch")
    assert stretch[0, 0, :, 0].min() > 0.9  # red edge squashed but kept
    pad = conditioning.resize_images(image, 64, 64, "pad")
    assert pad.shape == (1, 3, 64, 64)
    assert pad[..., :15, :].abs().max() == 0 and pad[..., 49:, :].abs().max() == 0  # black bars
    assert pad[0, 0, 32, 0] > 0.9
    with pytest.raises(InputError, match="resize mode"):
        conditioning.resize_images(image, 32, 32, "zoom")


@pytest.mark.parametrize("size", [(576, 1024), (144, 256), (224, 224), (100, 300)])
def test_antialiased_resize_matches_the_reference(size):
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    images = torch.rand(2, 3, *size) * 2 - 1
    ours = conditioning.resize_antialiased(images, (224, 224))
    assert torch.allclose(ours, _resize_with_antialiasing(images, (224, 224)), atol=1e-5)


def test_time_ids_take_fps_minus_one():
    ids = conditioning.time_ids(7, 127, 0.02, clips=2)
    assert ids.tolist() == [[6.0, 127.0, pytest.approx(0.02)]] * 2


def test_native_clip_crops_the_original_and_rounds_to_8_bit(model):
    image = _wide_image_with_red_edges()
    changed_edge = image.clone()
    changed_edge[:, :, :8] = 0.0
    native = conditioning.clip_image_embeds_native
    assert torch.allclose(native(model.image_encoder, image), native(model.image_encoder, changed_edge))  # center crop
    off_grid = torch.full((1, 224, 224, 3), 100.2 / 255)
    on_grid = torch.full((1, 224, 224, 3), 100 / 255)
    assert torch.equal(native(model.image_encoder, off_grid), native(model.image_encoder, on_grid))
    reference = conditioning.clip_image_embeds
    squashed = lambda img: conditioning.resize_images(img, 64, 32, "stretch") * 2 - 1
    assert not torch.allclose(reference(model.image_encoder, squashed(image)), reference(model.image_encoder, squashed(changed_edge)))


def test_augmentation_space_differs_between_variants(model):
    torch.manual_seed(0)
    images01 = torch.rand(1, 3, 64, 64)
    noise = torch.randn(images01.shape, generator=torch.Generator().manual_seed(3))
    # ComfyUI draws randn_like on the (B, H, W, 3) image, then the VAE sees (B, 3, H, W).
    comfy_noise = torch.randn((1, 64, 64, 3), generator=torch.Generator().manual_seed(3)).movedim(-1, 1)
    native = conditioning.encode_image_latent_native(model.vae.encoder, images01, 0.1, torch.Generator().manual_seed(3))
    expected = model.vae.encoder((images01 + 0.1 * comfy_noise) * 2 - 1).chunk(2, dim=1)[0]
    assert torch.allclose(native, expected, atol=1e-5)
    reference = conditioning.encode_image_latent(model.vae, images01 * 2 - 1, 0.1, torch.Generator().manual_seed(3))
    expected = model.vae.encode(images01 * 2 - 1 + 0.1 * noise).latent_dist.mode()
    assert torch.allclose(reference, expected, atol=1e-5)


def test_condition_is_deterministic_and_batched(model):
    images = torch.rand(3, 40, 70, 3)
    settings = dict(width=64, height=64, num_frames=5, fps=7, motion_bucket_id=100, augmentation=0.02)
    first, resized = conditioning.condition(model, images, **settings)
    again, _ = conditioning.condition(model, images, **settings)
    assert torch.equal(first.image_latent, again.image_latent) and torch.equal(first.image_embeds, again.image_embeds)
    assert first.latent_shape == (3, 5, 4, 8, 8) and resized.shape == (3, 64, 64, 3)
    assert first.added_time_ids[0].tolist() == [6.0, 100.0, pytest.approx(0.02)]
    other_seed, _ = conditioning.condition(model, images, augmentation_seed=1, **settings)
    assert not torch.equal(first.image_latent, other_seed.image_latent)
    native, _ = conditioning.condition(model, images, variant="comfyui_native", **settings)
    assert native.latent_shape == first.latent_shape
    with pytest.raises(InputError, match="preprocessing variant"):
        conditioning.condition(model, images, variant="sgm", **settings)


def test_size_message_names_the_wrong_dimension():
    with pytest.raises(InputError, match=r"^height 100 is not a multiple of 8 of at least 64 \(width 1024 is fine\).*Use 96 or 104"):
        conditioning.check_video_size(1024, 100, 14)
    with pytest.raises(InputError, match=r"^width 1020 is not .*\(height 576 is fine\).*Use 1016 or 1024"):
        conditioning.check_video_size(1020, 576, 14)
    with pytest.raises(InputError, match=r"^width 1020 and height 60 are not multiples of 8.*Use width 1016 or 1024 and height 64\."):
        conditioning.check_video_size(1020, 60, 14)
