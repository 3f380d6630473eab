"""From pixel clips to what the UNet trains on: model-space latents and a `Conditioning`.

One function, `encode_clips`, serves both on-the-fly training and the optional pre-pass that
caches its outputs to safetensors shards (so training can run without the VAE and CLIP on
the device). Conditioning uses `sfv_core.conditioning`'s reference preprocessing, as SVD was
trained: CLIP on the clean first frame, VAE latent of the first frame + aug * randn.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..conditioning import clip_image_embeds, encode_image_latent, time_ids
from ..errors import InputError
from ..models import VAE_SCALING_FACTOR
from ..sampling import Conditioning
from .data import Source, VideoClipDataset, item_rng
from .motion import augment_per_clip, motion_buckets, sampled_augmentation

log = logging.getLogger("sfv_core.train")

CACHE_INDEX = "index.json"
CACHE_KEYS = ("latents", "image_embeds", "image_latent", "added_time_ids")
VAE_FRAMES_PER_PASS = 8  # bounds the VAE encoder's activation memory at 768x448


@torch.no_grad()
def encode_clips(model, frames: torch.Tensor, data_cfg, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning]:
    """frames (B, T, 3, H, W) in [-1, 1] -> latents (B, T, 4, h, w) x 0.18215 (float32) and their conditioning."""
    vae = model.vae
    param = next(vae.parameters())
    clips, num_frames = frames.shape[:2]
    flat = frames.flatten(0, 1)
    # The VAE posterior's mode: the KL-f8 posterior std is tiny, and the mode keeps caching deterministic.
    raw = torch.cat([vae.encode(chunk.to(param.device, param.dtype)).latent_dist.mode().float() for chunk in flat.split(VAE_FRAMES_PER_PASS)])
    latents = (raw * VAE_SCALING_FACTOR).reshape(clips, num_frames, *raw.shape[1:])
    first = frames[:, 0]
    if data_cfg.conditioning == "per_clip":
        augmentation = sampled_augmentation(clips, data_cfg.augmentation_p_mean, data_cfg.augmentation_p_std, generator)
        image_latent = encode_image_latent(vae, augment_per_clip(first, augmentation, generator), 0.0, None)
        motion = motion_buckets(frames, data_cfg.motion_full_scale)
        ids = torch.stack([torch.full((clips,), data_cfg.fps - 1.0), motion, augmentation], dim=1).to(param.device)
    else:
        image_latent = encode_image_latent(vae, first, data_cfg.augmentation, generator)
        ids = time_ids(data_cfg.fps, data_cfg.motion_bucket_id, data_cfg.augmentation, clips, device=param.device)
    cond = Conditioning(image_embeds=clip_image_embeds(model.image_encoder, first).float(), image_latent=image_latent, added_time_ids=ids, num_frames=num_frames)
    return latents, cond


def batch_inputs(batch: dict, model, data_cfg, generator: torch.Generator, device) -> tuple[torch.Tensor, Conditioning]:
    """A loader batch (pixels or cached latents) -> (latents, Conditioning) on `device`."""
    if "latents" in batch:
        cond = Conditioning(batch["image_embeds"].float(), batch["image_latent"].float(), batch["added_time_ids"].float(), batch["latents"].shape[1])
        return batch["latents"].float().to(device), cond.to(device)
    latents, cond = encode_clips(model, batch["frames"], data_cfg, generator)
    return latents.to(device), cond.to(device)


def cache_settings(data_cfg) -> dict:
    """What a cache was built with; a cache built differently must not be reused silently."""
    keys = ("num_frames", "fps", "width", "height", "frame_folder_fps", "motion_bucket_id", "augmentation", "cache_clips_per_video")
    if data_cfg.conditioning == "per_clip":  # only then, so caches built before the switch stay valid
        keys += ("conditioning", "motion_full_scale", "augmentation_p_mean", "augmentation_p_std")
    return {key: getattr(data_cfg, key) for key in keys}


def cache_is_complete(folder: str | Path) -> bool:
    return (Path(folder) / CACHE_INDEX).is_file()


def _write_shard(rows: list[dict], path: Path) -> None:
    from safetensors.torch import save_file

    from ..video_io import atomic_path

    tensors = {key: torch.cat([row[key] for row in rows]).contiguous() for key in CACHE_KEYS}
    tensors["latents"] = tensors["latents"].half()  # halves the cache; latents x 0.18215 sit well inside fp16
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary))


def build_latent_cache(model, sources: list[Source], data_cfg, seed: int, folder: str | Path, rank: int = 0, world_size: int = 1) -> int:
    """Encode this process's share of the sources into shards; returns clips written (failures are skipped)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = VideoClipDataset(sources, data_cfg.num_frames, data_cfg.fps, data_cfg.width, data_cfg.height, seed)
    rows, shard, written, failed = [], 0, 0, 0
    for index in range(rank, len(sources), world_size):
        for repeat in range(data_cfg.cache_clips_per_video):
            try:
                frames = dataset.read_clip(sources[index], item_rng(seed, repeat, index).random())
            except Exception as error:  # same policy as training: skip and count
                log.warning("cache: skipping %s: %s", sources[index].path, error)
                failed += 1
                continue
            generator = torch.Generator().manual_seed(int(item_rng(seed, repeat, index).integers(2**62)))
            latents, cond = encode_clips(model, frames.unsqueeze(0), data_cfg, generator)
            rows.append({"latents": latents.cpu(), "image_embeds": cond.image_embeds.cpu(), "image_latent": cond.image_latent.cpu(), "added_time_ids": cond.added_time_ids.cpu()})
            if len(rows) == data_cfg.cache_shard_size:
                _write_shard(rows, folder / f"shard-{rank:03d}-{shard:05d}.safetensors")
                written, rows, shard = written + len(rows), [], shard + 1
    if rows:
        _write_shard(rows, folder / f"shard-{rank:03d}-{shard:05d}.safetensors")
        written += len(rows)
    log.info("cache: process %d wrote %d clips (%d failed)", rank, written, failed)
    return written


def finish_latent_cache(folder: str | Path, data_cfg) -> None:
    """Write the index (its presence marks the cache complete). Main process, after all shards."""
    from safetensors import safe_open

    from ..video_io import atomic_path

    folder = Path(folder)
    shards = []
    for path in sorted(folder.glob("shard-*.safetensors")):
        with safe_open(str(path), "pt") as f:
            shards.append({"file": path.name, "clips": f.get_slice("latents").get_shape()[0]})
    with atomic_path(folder / CACHE_INDEX) as temporary:
        temporary.write_text(json.dumps({"settings": cache_settings(data_cfg), "shards": shards}, indent=1))


class LatentCacheDataset(torch.utils.data.Dataset):
    """Cached clips, addressed by (epoch, index) like `VideoClipDataset`."""

    def __init__(self, folder: str | Path, data_cfg):
        self.folder = Path(folder)
        rebuild = f"delete {self.folder} to encode the cache again"
        try:
            index = json.loads((self.folder / CACHE_INDEX).read_text(encoding="utf-8"))
            settings, shards = index["settings"], [(str(s["file"]), int(s["clips"])) for s in index["shards"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"the latent cache index {self.folder / CACHE_INDEX} is damaged ({type(error).__name__}): {rebuild}") from None
        if settings != cache_settings(data_cfg):
            raise InputError(f"the latent cache in {folder} was built with {settings}, not the config's {cache_settings(data_cfg)}: point data.latent_cache at a new folder")
        usable = [(file, clips) for file, clips in shards if self._shard_ok(file, clips)]
        if not usable:
            raise InputError(f"every shard of the latent cache in {self.folder} is damaged or missing: {rebuild}")
        self.rows = [(file, row) for file, clips in usable for row in range(clips)]

    def _shard_ok(self, file: str, clips: int) -> bool:
        """A shard whose header does not hold `clips` rows of every cached tensor is skipped, with a warning."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.folder / file), "pt") as f:
                ok = all(name in f.keys() and f.get_slice(name).get_shape()[0] == clips for name in CACHE_KEYS)
        except Exception as error:  # safetensors reports a torn or foreign file in several ways
            ok, reason = False, f"{type(error).__name__}: {error}"
        else:
            reason = "its tensors do not match the index"
        if not ok:
            log.warning("latent cache: skipping damaged shard %s (%s); its %d clips are left out (delete the cache to encode them again)", self.folder / file, reason, clips)
        return ok

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        from safetensors import safe_open

        file, row = self.rows[key[1]]
        with safe_open(str(self.folder / file), "pt") as f:
            item = {name: f.get_slice(name)[row : row + 1][0].float() for name in CACHE_KEYS}
        item["fallbacks"] = torch.tensor(0)
        return item
