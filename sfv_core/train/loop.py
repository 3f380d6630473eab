"""What every trainer shares: accelerate, the base model, data, the loop, checkpoints, logs.

A trainer (the SF-V UNet trainer in `trainer`, the tiny decoder's in `decoder`) subclasses
`RunTrainer` and adds its networks and loss: `build()` makes the networks and optimisers and
returns its own objects to checkpoint by name (saved by `state` as safetensors + JSON, never
pickled), `train_step()` runs one optimiser step and returns
the losses to log, `after_step()` may write previews, `export()` writes the result.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import time
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError, OutputError
from ..files import writing
from ..models import TINY, SVDModel, build_random_model
from ..runtime import move
from ..sampling import Conditioning
from . import checkpointing
from .config import TINY_RANDOM
from .data import BatchStream, ClipOrder, Source, VideoClipDataset, scan
from .encoding import LatentCacheDataset, batch_inputs, build_latent_cache, cache_is_complete, finish_latent_cache
from .logs import LossLog
from .state import load_state, save_state

log = logging.getLogger("sfv_core.train")

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_base_model(path: str) -> SVDModel:
    """SVD weights in float32 on the CPU; the trainer places each part where it is needed."""
    if path == TINY_RANDOM:
        return build_random_model(TINY)
    from ..checkpoints import load_model

    return load_model(path, dtype=torch.float32, device="cpu")


def base_unet_config(path: str) -> dict:
    """The base UNet's config from the checkpoint's header alone (no weights read)."""
    if path == TINY_RANDOM:
        return dict(TINY.unet)
    from ..checkpoints import inspect_full_model

    return inspect_full_model(path).unet_config


def check_rng_states(folder: Path, rank: int) -> None:
    """accelerate skips an unreadable RNG file with an info log, which would quietly break the
    exact resume: read it first (weights_only, as accelerate does) so a bad one is an error."""
    from accelerate.utils import load

    states = load(folder / f"random_states_{rank}.pkl")
    if not isinstance(states, dict) or "torch_manual_seed" not in states:
        raise ValueError(f"random_states_{rank}.pkl holds no RNG states")


def make_accelerator(cfg):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # DDP: gradients live in the all-reduce buckets instead of a second copy (6 GB at full size).
    ddp = DistributedDataParallelKwargs(gradient_as_bucket_view=True)
    return Accelerator(mixed_precision={"fp32": "no"}.get(cfg.run.mixed_precision, cfg.run.mixed_precision), kwargs_handlers=[ddp])


class Progress:
    """Where the run is: step, data position and the trainer's noise generator (checkpointed).

    Each process draws its own noise; accelerate saves registered objects from the main
    process only, so the state holds every process's generator state (gathered) and each
    process takes back its own.
    """

    def __init__(self, seed: int, rank: int):
        self.step = 0
        self.rank = rank
        self.noise = torch.Generator().manual_seed(seed * 1009 + rank + 1)  # distinct per process
        self.stream: BatchStream | None = None
        self.data_state = {"epoch": 0, "position": 0}

    def attach(self, stream: BatchStream) -> None:
        self.stream = stream
        stream.load_state_dict(self.data_state)

    def state_dict(self) -> dict:
        from accelerate.utils import gather_object

        data = self.stream.state_dict() if self.stream is not None else self.data_state
        return {"step": self.step, "data": dict(data), "noise": gather_object([self.noise.get_state()])}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        if self.rank < len(state["noise"]):  # else more processes than when saved: keep the fresh seed
            self.noise.set_state(state["noise"][self.rank])
        self.data_state = dict(state["data"])
        if self.stream is not None:
            self.stream.load_state_dict(self.data_state)


class RunTrainer:
    def __init__(self, cfg, accelerator=None):
        self.cfg = cfg.validate()
        self.accelerator = accelerator or make_accelerator(cfg)
        self.device = self.accelerator.device
        if self.device.type == "cpu" and cfg.run.mixed_precision == "fp16":
            raise InputError("run.mixed_precision fp16 needs a GPU: use 'fp32' or 'bf16' on the CPU")
        self.run_dir = Path(cfg.run.output_dir)
        # Same seed on every process: replicated networks must start identical.
        torch.manual_seed(cfg.run.seed)
        self.check_before_load()
        self.model = load_base_model(cfg.model.path)
        states = self.build()
        self.progress = Progress(cfg.run.seed, self.accelerator.process_index)
        # Saved by train.state as safetensors + JSON; never registered with accelerate, which pickles them.
        self.own_state = {**states, "progress": self.progress}
        self.stream: BatchStream | None = None
        self.loss_log: LossLog | None = None

    def build(self) -> dict:
        """Make the networks and optimisers; return the extra objects to checkpoint, by name
        (each with state_dict / load_state_dict)."""
        raise NotImplementedError

    def check_before_load(self) -> None:
        """Settings that need the checkpoint's header (not its weights), checked before it loads."""

    def check_checkpoint(self, folder: Path) -> None:
        """Refuse a checkpoint this config cannot resume, before anything of it loads."""

    def train_step(self) -> dict:
        """One optimiser step (advances self.progress.step); returns the losses to log."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after every step (previews)."""

    def vae_needed_after_cache(self) -> bool:
        """Whether the VAE stays on the device after a latent-cache pre-pass (previews, a teacher decoder)."""
        return False

    def export(self, folder: str | Path | None = None) -> list[Path]:
        raise NotImplementedError

    def place_encoders(self, vae: bool, image_encoder: bool) -> None:
        """VAE and CLIP on the device only while used there (encoding, previews); else on the CPU."""
        frozen_dtype = PRECISION_DTYPES[self.cfg.run.mixed_precision]
        vae_dtype = torch.float32 if frozen_dtype == torch.float16 else frozen_dtype  # SVD's VAE overflows in fp16
        cpu = torch.device("cpu")
        move(self.model.vae, self.device if vae else cpu, vae_dtype if vae else torch.float32)
        move(self.model.image_encoder, self.device if image_encoder else cpu, frozen_dtype if image_encoder else torch.float32)

    # ---- data ---------------------------------------------------------------------------

    def _sources(self) -> list[Source]:
        """Probe the data folder once per run (main process) and keep the list in the run folder."""
        from ..video_io import atomic_path

        listing = self.run_dir / "sources.json"
        d = self.cfg.data
        settings = {"path": str(Path(d.path).resolve()), "num_frames": d.num_frames, "fps": d.fps, "frame_folder_fps": d.frame_folder_fps}
        if self.accelerator.is_main_process and (not listing.is_file() or json.loads(listing.read_text()).get("settings") != settings):
            report = scan(d.path, d.num_frames, d.fps, d.frame_folder_fps)
            log.info("data: %s", report.summary())
            listed = {"settings": settings, "summary": report.summary(), "unreadable": report.unreadable, "too_short": report.too_short, "sources": [s.__dict__ for s in report.sources]}
            with atomic_path(listing) as temporary:
                temporary.write_text(json.dumps(listed, indent=1))
        self.accelerator.wait_for_everyone()
        saved = json.loads(listing.read_text())
        if not saved["sources"]:
            raise InputError(
                f"data.path {d.path} holds no usable training video ({saved['summary']}): it needs videos (.mp4 .webm .mov .mkv .avi) "
                f"or frame folders at least {d.num_frames} frames long at {d.fps:g} fps"
            )
        return [Source(**{**s, "frames": tuple(s["frames"])}) for s in saved["sources"]]

    def setup_data(self) -> None:
        d, acc = self.cfg.data, self.accelerator
        with writing(self.run_dir):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if d.latent_cache:
            if not cache_is_complete(d.latent_cache):
                self.place_encoders(vae=True, image_encoder=True)
                build_latent_cache(self.model, self._sources(), d, self.cfg.run.seed, d.latent_cache, acc.process_index, acc.num_processes)
                acc.wait_for_everyone()
                if acc.is_main_process:
                    finish_latent_cache(d.latent_cache, d)
                acc.wait_for_everyone()
                self.place_encoders(vae=self.vae_needed_after_cache(), image_encoder=False)
            dataset = LatentCacheDataset(d.latent_cache, d)
        else:
            dataset = VideoClipDataset(self._sources(), d.num_frames, d.fps, d.width, d.height, self.cfg.run.seed)
        order = ClipOrder(len(dataset), d.batch_size, self.cfg.run.seed, acc.process_index, acc.num_processes)
        self.stream = BatchStream(dataset, order, d.num_workers)
        self.progress.attach(self.stream)

    def next_inputs(self) -> tuple[torch.Tensor, Conditioning, int]:
        """The next micro-batch as (model-space latents, conditioning, sources skipped for it)."""
        batch = self.stream.next()
        latents, cond = batch_inputs(batch, self.model, self.cfg.data, self.progress.noise, self.device)
        return latents, cond, int(batch["fallbacks"].sum())

    # ---- the run ------------------------------------------------------------------------

    def mean_over_processes(self, values: dict) -> dict:
        """Logged losses averaged over processes (every process must call this)."""
        if self.accelerator.num_processes == 1:
            return values
        keys = sorted(values)
        means = self.accelerator.reduce(torch.tensor([float(values[k]) for k in keys], device=self.device), reduction="mean")
        return dict(zip(keys, means.tolist()))

    def save_checkpoint(self) -> Path | None:
        acc, step = self.accelerator, self.progress.step
        if acc.is_main_process:
            checkpointing.clear_temp_folders(self.run_dir)
        acc.wait_for_everyone()
        folder = checkpointing.temp_folder(self.run_dir, step)
        try:
            acc.save_state(str(folder), safe_serialization=True)
            save_state(folder, self.own_state, write=acc.is_main_process)
        except Exception as error:  # torch, safetensors and the OS each word a full disk differently
            shutil.rmtree(folder, ignore_errors=True)  # a half-written checkpoint would keep the disk full
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise OutputError(
                f"writing the checkpoint of step {step} into {folder.parent} failed ({reason}); the previous checkpoint is intact: "
                "if the disk is full, free space and rerun the same command to resume."
            ) from None
        acc.wait_for_everyone()
        final = None
        if acc.is_main_process:
            final = checkpointing.publish(self.run_dir, step, self.cfg.run.keep_checkpoints)
            log.info("checkpoint: %s", final)
        acc.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Load `latest` if there is one: weights, optimisers, the trainer's own objects, RNGs, data position, step."""
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        # The main process checks the checksums once; every process loads the folder it chose.
        chosen = [checkpointing.latest_checkpoint(self.run_dir) if acc.is_main_process else None]
        folder = broadcast_object_list(chosen)[0] if acc.num_processes > 1 else chosen[0]
        if folder is None:
            return False
        self.check_checkpoint(folder)
        try:
            check_rng_states(folder, acc.process_index)
            acc.load_state(str(folder))
        except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, KeyError, EOFError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"cannot load checkpoint {folder} ({reason}): delete that folder to resume from an older one.") from None
        load_state(folder, self.own_state)
        log.info("resumed from %s at step %d", folder, self.progress.step)
        return True

    def train(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process:
            checkpointing.clear_temp_folders(self.run_dir)
        self.setup_data()
        if cfg.run.resume:
            self.resume()
        if acc.is_main_process:
            self.loss_log = LossLog(self.run_dir, self.progress.step)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        while self.progress.step < cfg.run.steps:
            started = time.perf_counter()
            values = self.train_step()
            step = self.progress.step
            if step % cfg.run.log_every == 0 or step == cfg.run.steps:
                values = self.mean_over_processes({**values, "seconds_per_step": time.perf_counter() - started})
                if self.loss_log is not None:
                    self.loss_log.write(step, values)
            self.after_step(step)
            if step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps:
                self.save_checkpoint()
        if self.loss_log is not None:
            self.loss_log.close()
