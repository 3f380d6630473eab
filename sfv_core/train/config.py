"""The trainer's configuration: dataclasses whose field docs are the one source of truth.

The YAML file (configs/train_sfv.yaml), `--set section.field=value` overrides and the
`train --help` text are all read from / generated from these fields. Defaults are the
paper's recipe (SF-V, Zhang et al. 2024) where it states one; the rest are marked
"not given by the paper" in their help.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import limits
from ..errors import InputError
from ..sampling import SFV_TRAINING_LEVELS
from .losses import HEAD_REDUCTIONS, RECONSTRUCTION_FORMS

TINY_RANDOM = "tiny-random"
LOSS_MODES = ("sfv_adversarial", "edm_diffusion")
R1_MODES = ("approximate", "exact")
PRECISIONS = ("fp32", "bf16", "fp16")
CONDITIONING_MODES = ("fixed", "per_clip")


def doc(help_text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    """A dataclass field carrying its help text."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass
class ModelConfig:
    path: str = doc(
        "Base weights: an SVD img2vid single file (.safetensors) or diffusers folder, loaded with "
        f"checkpoints.load_model. '{TINY_RANDOM}' builds a tiny random model of the same classes "
        "(a TESTING AID: nothing it trains is useful).",
        "",
    )
    adapter: str = doc(
        "'full': every UNet weight trains (the paper's recipe). 'lora': the UNet is frozen and PEFT LoRA adapters on "
        "lora_targets train; the discriminator's encoder shares the frozen base (adapters off), so one UNet is in memory. "
        "Exports export/sfv_lora.safetensors (ComfyUI's LoRA key layout, for LoraLoaderModelOnly or generate --sfv-lora).",
        "full",
    )
    lora_rank: int = doc("lora only: rank of every adapter.", 32)
    lora_alpha: float = doc("lora only: alpha; the adapter's update is scaled by alpha / rank.", 32.0)
    lora_targets: list = doc(
        "lora only: layers that get adapters. Groups: attention (q, k, v, out of spatial and temporal attention), "
        "feed_forward (their feed-forwards), spatial_resnets, temporal_resnets (the resnets' convs); or regexes over module names.",
        factory=lambda: ["attention", "feed_forward"],
    )
    lora_dropout: float = doc("lora only: dropout on the adapters' input (PEFT's lora_dropout).", 0.0)


@dataclass
class DataConfig:
    path: str = doc("Folder of videos (.mp4 .webm .mov .mkv .avi, read with PyAV) and/or of frame folders (folders of .png/.jpg/.webp frames, sorted by name). Searched recursively.", "")
    num_frames: int = doc("Frames per training clip (SVD img2vid: 14). The first frame is the image condition.", 14)
    fps: float = doc("Clips are resampled to this frame rate; it also goes into the time ids (as fps - 1).", 7.0)
    width: int = doc("Clip width in pixels after resize + centre crop (a multiple of 8).", 768)
    height: int = doc("Clip height in pixels after resize + centre crop (a multiple of 8).", 448)
    frame_folder_fps: typing.Optional[float] = doc("Frame rate of frame-folder sources; null means their frames are already at data.fps.", None)
    motion_bucket_id: int = doc("Motion bucket id put in the time ids (SVD default 127).", 127)
    augmentation: float = doc("Noise augmentation of the conditioning frame in [-1,1] pixel space (SVD: 0.02); also goes into the time ids.", 0.02)
    conditioning: str = doc(
        "'fixed': every clip trains with motion_bucket_id and augmentation above. 'per_clip': each clip's motion bucket "
        "is measured from its frame differences (255 * min(1, mean|x[t+1]-x[t]| / motion_full_scale), [0,1] pixel units; "
        "sfv_core/train/motion.py) and its augmentation drawn lognormal, so the model learns what the two dials mean "
        "(not given by the paper; SVD trained with per-clip values).",
        "fixed",
    )
    motion_full_scale: float = doc("per_clip only: the mean |frame difference| (in [0,1] pixel units) that maps to motion bucket 255; 127 is half of it.", 0.1)
    augmentation_p_mean: float = doc("per_clip only: mean of ln(augmentation) (-3.0: median 0.05, as open SVD fine-tuning code draws it).", -3.0)
    augmentation_p_std: float = doc("per_clip only: std of ln(augmentation).", 0.5)
    batch_size: int = doc("Clips per device per micro-batch (the paper: 1, times 4 accumulation steps, times 8 GPUs = 32).", 1)
    num_workers: int = doc("DataLoader worker processes decoding videos.", 2)
    latent_cache: str = doc(
        "Folder of safetensors shards of VAE latents + CLIP embeddings. Empty: encode every batch on the fly "
        "(VAE and CLIP stay on the device). Set and missing: the pre-pass fills it first, then training reads "
        "only latents. Each cached clip keeps one start position and one augmentation noise draw.",
        "",
    )
    cache_clips_per_video: int = doc("Clips (random start positions) cached per video by the pre-pass.", 1)
    cache_shard_size: int = doc("Clips per safetensors shard in the latent cache.", 256)


@dataclass
class LossConfig:
    mode: str = doc("Training objective: 'sfv_adversarial' (SF-V, the paper) or 'edm_diffusion' (EDM x0 loss as SVD was pretrained).", "sfv_adversarial")
    generator_levels: list = doc("Noise levels the generator's input is drawn from, uniformly (the paper: the first three of a 4-level Karras schedule).", factory=lambda: list(SFV_TRAINING_LEVELS))
    disc_p_mean: float = doc("Mean of ln(sigma) of the lognormal noise added to real and generated clips before the discriminator (the paper: -1).", -1.0)
    disc_p_std: float = doc("Std of ln(sigma) for that noise (the paper: 1).", 1.0)
    disc_levels: int = doc("The lognormal draw is snapped to the nearest of this many Karras levels (sigma 0.002..700, rho 7).", 1000)
    adversarial_weight: float = doc("Weight of the generator's hinge loss (0: the reconstruction-only control, the discriminator still trains).", 1.0)
    head_reduction: str = doc(
        "How the hinge losses combine the 8 heads (positions are always averaged): 'mean' (keeps the balance with the "
        "reconstruction term when heads are ablated) or 'sum' (as ADD sums its heads: 8x the mean). Not given by the paper.",
        "mean",
    )
    reconstruction_weight: float = doc("Weight of the pseudo-Huber loss between G's x0 and the real latents (the paper: 0.1).", 0.1)
    reconstruction_form: str = doc(
        "'paper': the paper's Eq. 9, iCT's pseudo-Huber on the whole clip, sqrt(||x0_hat - x0||^2 + c^2) - c with "
        "c = 0.00054 sqrt(d) (d = elements per clip), averaged over clips. 'per_element': sqrt((a-b)^2 + huber_c^2) - huber_c "
        "averaged over elements (this trainer's earlier form, close to L1; its gradient is about sqrt(d) weaker).",
        "paper",
    )
    huber_c: float = doc("c of the 'per_element' form only (0.03; the 'paper' form derives c from d and refuses another value here).", 0.03)
    r1_weight: float = doc("gamma of the R1 penalty gamma/2 * E||grad_x D(x_real)||^2 on noised real inputs (not given by the paper; 0 disables).", 1.0)
    r1_mode: str = doc(
        "'approximate': E[(D(x + delta*n) - D(x))^2] / delta^2 with n ~ N(0, I), a forward finite-difference estimate of "
        "the same ||grad_x D||^2 from two forward passes, no double backward (this project's estimator; APT's approximated "
        "R1, Lin et al. 2025, penalises the undivided difference). Both passes run in fp32, so the frozen encoder is kept "
        "in fp32 (+1 GB at full size): in bf16 the division by delta^2 amplified rounding about 6x. 'exact': autograd "
        "double backward through the frozen encoder with math attention, which at 768x448x14 needs ~99 GB of activations "
        "(benchmarks/bench_train.py --estimate).",
        "approximate",
    )
    r1_delta: float = doc("delta of the approximate R1 (latent units; the discriminator's inputs carry noise of sigma ~0.37).", 0.01)
    r1_interval: int = doc("Apply R1 every this many steps, scaled by the interval (lazy regularisation, StyleGAN2); it needs a double backward.", 4)
    edm_p_mean: float = doc("edm_diffusion only: mean of ln(sigma) of the training noise (SVD: 0.7).", 0.7)
    edm_p_std: float = doc("edm_diffusion only: std of ln(sigma) of the training noise (SVD: 1.6).", 1.6)


@dataclass
class DiscriminatorConfig:
    heads: str = doc("Which heads run after each of the 4 down blocks: 'both', 'spatial' or 'temporal' (ablations).", "both")
    features: str = doc(
        "Where the heads read each down block: 'block_output' (after its downsampler) or 'before_downsample' (its last "
        "layer before the downsampler: 2x the resolution on the first three levels, for small clips whose block outputs "
        "shrink to 1x1). Not given by the paper.",
        "block_output",
    )
    head_channels: int = doc("Width of every head (not given by the paper).", 256)
    cond_channels: int = doc("Width of the condition embedding (image embedding, noise level, frame index) the heads project with.", 256)


@dataclass
class OptimConfig:
    lr_generator: float = doc("AdamW learning rate of the generator (the paper: 1e-5).", 1e-5)
    lr_discriminator: float = doc("AdamW learning rate of the discriminator heads (the paper: 1e-4).", 1e-4)
    beta1: float = doc("Adam beta1 of both optimisers (the paper: 0.5).", 0.5)
    beta2: float = doc("Adam beta2 of both optimisers (the paper: 0.999).", 0.999)
    weight_decay: float = doc("AdamW weight decay (not given by the paper).", 0.0)
    grad_clip: float = doc("Clip each network's gradient norm to this (0 disables; not in the paper).", 0.0)
    gradient_accumulation: int = doc("Micro-batches per optimiser step (the paper: 4).", 4)
    ema_decay: float = doc("Decay of the EMA of the generator, applied every optimiser step (the paper: 0.95). The EMA is what gets exported.", 0.95)


@dataclass
class RunConfig:
    output_dir: str = doc("Run folder: checkpoints/, logs (loss.csv, tensorboard/), previews/, export/.", "outputs/sfv-train")
    steps: int = doc("Optimiser steps to train (the paper: 50K).", 50000)
    seed: int = doc("Seed of everything random: weights of the heads, data order, clip starts, noise.", 0)
    mixed_precision: str = doc("'fp32', 'bf16' or 'fp16' (autocast via accelerate; fp16 only on GPUs and only for edm_diffusion, bf16 recommended). Frozen parts are stored in that dtype; trained weights stay float32.", "bf16")
    gradient_checkpointing: bool = doc("Recompute activations in backward (diffusers' enable_gradient_checkpointing) for G and the frozen encoder.", True)
    checkpoint_every: int = doc("Write a resumable checkpoint every this many steps (and at the end).", 500)
    keep_checkpoints: int = doc("Older checkpoints beyond this many are deleted.", 3)
    resume: bool = doc("Continue from output_dir/checkpoints/latest when it exists.", True)
    log_every: int = doc("Log losses (CSV, TensorBoard when installed) every this many steps.", 10)
    preview_every: int = doc("Write previews/step-N.webp (a one-step sample of the EMA generator, decoded by the VAE) every this many steps; 0 disables. Keeps the VAE on the device, also with a latent cache.", 1000)
    export_dtype: str = doc("dtype of the exported files: 'fp16' (as SVD's released files), 'bf16' or 'fp32'.", "fp16")
    export_single_file: bool = doc("Also export the EMA generator inside a complete SVD single file (UNet + base VAE + CLIP) for ComfyUI's ImageOnlyCheckpointLoader.", False)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "TrainConfig":
        o = self.optim
        checks = common_checks(self) + [
            (0.0 <= o.ema_decay <= 1.0, f"optim.ema_decay must be between 0 and 1, got {o.ema_decay}"),
            (o.lr_generator >= 0 and o.lr_discriminator >= 0, "optim learning rates must be >= 0"),
            (self.loss.disc_levels >= 2 and self.loss.disc_p_std > 0 and self.loss.edm_p_std > 0 and self.loss.huber_c > 0, "loss.disc_levels must be >= 2, and disc_p_std, edm_p_std and huber_c > 0"),
            (self.loss.mode in LOSS_MODES, f"loss.mode must be one of {LOSS_MODES}"),
            (bool(self.loss.generator_levels) and all(isinstance(s, (int, float)) and s > 0 for s in self.loss.generator_levels), "loss.generator_levels must be a list of positive noise levels"),
            (self.loss.r1_mode in R1_MODES, f"loss.r1_mode must be one of {R1_MODES}"),
            (self.loss.r1_interval >= 1 and self.loss.r1_delta > 0, "loss.r1_interval must be >= 1 and loss.r1_delta > 0"),
            (self.discriminator.heads in ("both", "spatial", "temporal"), "discriminator.heads must be both, spatial or temporal"),
            (self.discriminator.features in ("block_output", "before_downsample"), "discriminator.features must be block_output or before_downsample"),
        ]
        return raise_failed(checks + recipe_checks(self) + adapter_checks(self.model), self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def common_checks(config) -> list[tuple[bool, str]]:
    """Checks of the sections every trainer's config has: model, data, optim, run. Numbers
    outside the shared ranges (sfv_core.limits) and NaN / infinities are refused here at once."""
    check_finite_fields(config)
    d, o, r = config.data, config.optim, config.run
    ranged = [
        (limits.CLIP_WIDTH, d.width, "data.width"), (limits.CLIP_HEIGHT, d.height, "data.height"), (limits.FRAMES, d.num_frames, "data.num_frames"),
        (limits.FPS, d.fps, "data.fps"), (limits.MOTION_BUCKET, d.motion_bucket_id, "data.motion_bucket_id"),
        (limits.AUGMENTATION, d.augmentation, "data.augmentation"), (limits.SEED, r.seed, "run.seed"),
    ]
    for limit, value, name in ranged:
        limit.check(value, name)
    return [
        (r.mixed_precision in PRECISIONS, f"run.mixed_precision must be one of {PRECISIONS}"),
        (r.export_dtype in PRECISIONS, f"run.export_dtype must be one of {PRECISIONS}"),
        (r.steps >= 1, f"run.steps must be at least 1, got {r.steps} (0 would export the untrained network)"),
        (r.checkpoint_every >= 1 and r.log_every >= 1, "run.checkpoint_every and run.log_every must be at least 1 (steps between saves / log lines)"),
        (r.keep_checkpoints >= 1 and r.preview_every >= 0, "run.keep_checkpoints must be at least 1 and run.preview_every at least 0"),
        (o.weight_decay >= 0 and o.grad_clip >= 0, "optim weight_decay and grad_clip must be >= 0"),
        (0.0 <= o.beta1 < 1.0 and 0.0 <= o.beta2 < 1.0, "optim.beta1 and optim.beta2 must be in [0, 1)"),
        (d.num_workers >= 0 and d.cache_clips_per_video >= 1 and d.cache_shard_size >= 1, "data.num_workers must be >= 0, cache_clips_per_video and cache_shard_size >= 1"),
        (d.width % 8 == 0 and d.height % 8 == 0, "data.width and data.height must be multiples of 8 (the VAE works on 8x8 pixel blocks)"),
        (d.num_frames >= 2, "data.num_frames must be at least 2"),
        (o.gradient_accumulation >= 1 and d.batch_size >= 1, "batch_size and gradient_accumulation must be >= 1"),
        (bool(config.model.path), f"model.path is empty: point it at an SVD single file or diffusers folder ('{TINY_RANDOM}' for tests)"),
        (bool(d.path) or bool(d.latent_cache), "data.path is empty: point it at a folder of videos or frame folders"),
    ]


def check_finite_fields(config) -> None:
    for section_name in sections(type(config)):
        section = getattr(config, section_name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"config field {section_name}.{f.name} must be a finite number, got {value}")


def raise_failed(checks: list[tuple[bool, str]], config):
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    return config


def sections(root: type = TrainConfig) -> dict[str, type]:
    """{'model': ModelConfig, 'data': DataConfig, ...} of a trainer's config class."""
    return typing.get_type_hints(root)


def recipe_checks(config: TrainConfig) -> list[tuple[bool, str]]:
    """Loss options that contradict each other or the precision: refused before any model loads."""
    loss, defaults, data = config.loss, LossConfig(), config.data
    adversarial_only = ("reconstruction_form", "head_reduction", "huber_c")
    changed = [name for name in adversarial_only if getattr(loss, name) != getattr(defaults, name)]
    fixed_values = [f"data.{name}" for name in ("motion_bucket_id", "augmentation") if getattr(data, name) != getattr(DataConfig(), name)]
    return [
        (data.conditioning in CONDITIONING_MODES, f"data.conditioning must be one of {CONDITIONING_MODES}"),
        (data.motion_full_scale > 0 and data.augmentation_p_std >= 0, "data.motion_full_scale must be > 0 and data.augmentation_p_std >= 0"),
        (data.conditioning == "fixed" or not fixed_values,
         f"{' and '.join(fixed_values)} are the fixed values; data.conditioning per_clip measures and draws them per clip: drop them or use conditioning fixed"),
        (loss.reconstruction_form in RECONSTRUCTION_FORMS, f"loss.reconstruction_form must be one of {RECONSTRUCTION_FORMS}"),
        (loss.head_reduction in HEAD_REDUCTIONS, f"loss.head_reduction must be one of {HEAD_REDUCTIONS}"),
        (loss.reconstruction_form == "per_element" or loss.huber_c == defaults.huber_c,
         "loss.huber_c is the c of reconstruction_form 'per_element'; the 'paper' form uses c = 0.00054*sqrt(d): "
         "drop huber_c or set loss.reconstruction_form=per_element"),
        (loss.mode != "edm_diffusion" or not changed,
         f"loss.{', loss.'.join(changed)} belong to loss.mode sfv_adversarial; edm_diffusion has no such term: drop them or use sfv_adversarial"),
        (loss.mode != "sfv_adversarial" or config.run.mixed_precision != "fp16",
         "run.mixed_precision fp16 is refused with loss.mode sfv_adversarial (its two optimisers would share one "
         "GradScaler and clip still-scaled gradients): use bf16 (or fp32)"),
    ]


def adapter_checks(model: ModelConfig) -> list[tuple[bool, str]]:
    """LoRA settings: their ranges, and that they go with model.adapter lora."""
    from .adapters import ADAPTERS

    defaults = ModelConfig()
    lora_fields = ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout")
    changed = [name for name in lora_fields if getattr(model, name) != getattr(defaults, name)]
    targets = model.lora_targets
    return [
        (model.adapter in ADAPTERS, f"model.adapter must be one of {ADAPTERS}, got {model.adapter!r}"),
        (model.adapter == "lora" or not changed,
         f"model.{', model.'.join(changed)} belong to model.adapter lora; the full recipe trains every weight: drop them or set model.adapter=lora"),
        (isinstance(model.lora_rank, int) and model.lora_rank >= 1, f"model.lora_rank must be a whole number >= 1, got {model.lora_rank!r}"),
        (model.lora_alpha > 0, f"model.lora_alpha must be > 0, got {model.lora_alpha}"),
        (0.0 <= model.lora_dropout < 1.0, f"model.lora_dropout must be in [0, 1), got {model.lora_dropout}"),
        (isinstance(targets, list) and bool(targets) and all(isinstance(t, str) and t for t in targets),
         "model.lora_targets must be a non-empty list of group names or regexes"),
    ]


def cpu_advice(config: TrainConfig) -> str | None:
    """One loud line for a CPU run with the shipped (GPU) settings that make it slow, or None."""
    changes = [
        ("run.mixed_precision=fp32", config.run.mixed_precision != "fp32"),
        ("optim.gradient_accumulation=1", config.optim.gradient_accumulation > 1),
        ("data.latent_cache=FOLDER", not config.data.latent_cache),
        ("run.gradient_checkpointing=false", config.run.gradient_checkpointing),
    ]
    wanted = [change for change, needed in changes if needed]
    if not wanted:
        return None
    return ("TRAINING ON THE CPU with GPU settings, which are many times slower here: set " + ", ".join(wanted)
            + " (configs/quickstart_cpu.yaml has them)")


def _field_types(section_type: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(section_type)


def _coerce(value, expected, key: str):
    """Check a YAML / --set value against a field's type; ints are accepted for floats."""
    origin = typing.get_origin(expected)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        expected = next(t for t in typing.get_args(expected) if t is not type(None))
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if expected in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" (no dot) as text
            return expected(value)
        except ValueError:
            pass
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if expected is tuple and isinstance(value, list):  # YAML has lists only
        return tuple(value)
    if isinstance(value, expected):
        return value
    raise InputError(f"config field {key} expects {expected.__name__}, got {value!r}")


def apply_values(config, values: dict, origin: str):
    """Set `{section: {field: value}}` onto `config`, rejecting unknown keys by name."""
    known = sections(type(config))
    for section_name, entries in (values or {}).items():
        if section_name not in known:
            raise InputError(f"{origin}: unknown config section {section_name!r}; sections are {sorted(known)}")
        if not isinstance(entries, dict):
            raise InputError(f"{origin}: section {section_name!r} must be a mapping of field: value")
        section = getattr(config, section_name)
        types = _field_types(known[section_name])
        for name, value in entries.items():
            if name not in types:
                raise InputError(f"{origin}: unknown field {section_name}.{name}; fields are {sorted(types)}")
            setattr(section, name, _coerce(value, types[name], f"{section_name}.{name}"))
    return config


def resolve_key(key: str, root: type = TrainConfig) -> tuple[str, str]:
    """'section.field', or a bare field name that exists in exactly one section."""
    known = sections(root)
    if "." in key:
        section, name = key.split(".", 1)
        if section not in known:
            raise InputError(f"--set {key}: unknown config section {section!r}; sections are {sorted(known)}")
        return section, name
    matches = [s for s, t in known.items() if key in _field_types(t)]
    if len(matches) != 1:
        where = f"it is in {matches}" if matches else "no section has it"
        raise InputError(f"--set {key}: write section.field ({where})")
    return matches[0], key


def parse_overrides(pairs: list[str], root: type = TrainConfig) -> dict:
    """['run.steps=10', 'lr_generator=2e-5'] -> {'run': {'steps': 10}, 'optim': {...}}; values are YAML."""
    values: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        section, name = resolve_key(key.strip(), root)
        expected = _field_types(sections(root)[section]).get(name)
        # Text fields keep the text as typed (YAML would turn e.g. "no" into False).
        values.setdefault(section, {})[name] = text if expected is str else yaml.safe_load(text)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, root: type = TrainConfig):
    """Defaults, then the YAML file, then `--set` overrides."""
    config = root()
    if path:
        apply_values(config, read_yaml(Path(path)), str(path))
    return apply_values(config, parse_overrides(overrides or [], root), "--set")


def read_yaml(path: Path) -> dict:
    """A config file's mapping; plain YAML only (safe_load: no Python tags)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist: check --config (configs/train_sfv.yaml is the template)") from None
    except IsADirectoryError:
        raise InputError(f"config {path} is a folder: --config takes a YAML file") from None
    except UnicodeDecodeError:
        raise InputError(f"config file {path} is not text: --config takes a YAML file") from None
    except OSError as error:
        raise InputError(f"cannot read config file {path} ({error.strerror}): check its permissions") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise InputError(f"config file {path} is not plain YAML{line} ({problem}): write sections of field: value (no Python tags)") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"config file {path} holds a {type(values).__name__}, not a mapping: write sections of field: value (see configs/train_sfv.yaml)")
    return values


def help_text(root: type = TrainConfig) -> str:
    """Every field with its type, default and doc, for `train --help`."""
    import textwrap

    lines = ["config fields (YAML section: field; override with --set section.field=value):"]
    for section_name, section_type in sections(root).items():
        lines.append(f"\n  {section_name}:")
        types = _field_types(section_type)
        for f in dataclasses.fields(section_type):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            type_name = getattr(types[f.name], "__name__", str(types[f.name]).replace("typing.", ""))
            lines.append(f"    {section_name}.{f.name} ({type_name}, default {default!r})")
            lines.extend(textwrap.wrap(f.metadata["help"], 100, initial_indent=" " * 8, subsequent_indent=" " * 8))
    return "\n".join(lines)


def to_yaml(config) -> str:
    """The config as YAML with every field's help as a comment (configs/train_sfv.yaml is this)."""
    import textwrap

    lines = []
    for section_name in sections(type(config)):
        section = getattr(config, section_name)
        lines.append(f"{section_name}:")
        for f in dataclasses.fields(section):
            for comment in textwrap.wrap(f.metadata["help"], 96):
                lines.append(f"  # {comment}")
            value = yaml.safe_dump({f.name: getattr(section, f.name)}, default_flow_style=True, width=1000).strip()[1:-1]
            lines.append(f"  {value}")
        lines.append("")
    return "\n".join(lines)
