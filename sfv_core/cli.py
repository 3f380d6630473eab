"""`python -m sfv_core ...`: generate a clip, write a tiny test checkpoint, train."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .assets import DEMO_IMAGE, TOY_CHECKPOINT, TOY_START_IMAGE
from .errors import InputError, SFVError

# `generate` with no --checkpoint runs the bundled toy SF-V model (made by
# `python -m sfv_core.toy.experiment`) on a held-out frame of its synthetic data, at the size
# and length it was trained for. With a checkpoint, SVD's own defaults apply.
TOY_DEFAULTS = dict(image=[str(TOY_START_IMAGE)], width=64, height=64, frames=8)
SVD_DEFAULTS = dict(image=[str(DEMO_IMAGE)], width=1024, height=576, frames=14)


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a default only where there is one: unset options say theirs in their help."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _add_generate(subparsers) -> None:
    from .conditioning import RESIZE_MODES, VARIANTS
    from .extend import CONDITION_FRAMES, CROSSFADES, DEFAULT_CONDITION_FRAME, DEFAULT_CROSSFADE, DEFAULT_OVERLAP, DEFAULT_OVERLAP_DENOISE
    from .runtime import ATTENTION_CHOICES, COMPILE_CHOICES, DTYPE_CHOICES
    from .sampling import MAX_STEPS

    p = subparsers.add_parser("generate", help="image -> video in one UNet pass", formatter_class=_DefaultsHelp, allow_abbrev=False)
    p.add_argument("--checkpoint", help="SVD-family single file (.safetensors) or diffusers folder (default: the bundled toy SF-V model)")
    p.add_argument("--sfv-unet", help="SF-V UNet file that replaces the checkpoint's UNet")
    p.add_argument("--sfv-lora", help="SF-V LoRA file merged into the UNet (the checkpoint's, or --sfv-unet's) at load")
    p.add_argument("--lora-strength", type=float, default=1.0, help="with --sfv-lora: how much of the LoRA's change is applied (1: as trained, 0: none)")
    p.add_argument("--image", nargs="+", help="start image(s); one clip per image (default: a bundled image)")
    p.add_argument("--frames", type=int, help="frames per clip; default 14 (the toy model: 8)")
    p.add_argument("--width", type=int, help="a multiple of 8, at least 64; default 1024 (the toy model: 64)")
    p.add_argument("--height", type=int, help="a multiple of 8, at least 64; default 576 (the toy model: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (the same seed gives ComfyUI's KSampler noise)")
    p.add_argument("--steps", type=int, default=1, help=f"UNet passes, 1 to {MAX_STEPS}, on SF-V's noise levels")
    p.add_argument("--fps", type=int, default=7, help="frame rate the model is told (and the output's)")
    p.add_argument("--motion-bucket", type=int, default=127, help="motion_bucket_id: more motion when higher")
    p.add_argument("--aug", type=float, default=0.02, help="noise augmentation of the start frame")
    p.add_argument("--resize", choices=RESIZE_MODES, default="crop", help="how the image is fitted to width x height")
    p.add_argument("--preprocess", choices=VARIANTS, default="reference", help="reference (SVD/diffusers) or ComfyUI's native SVD node")
    p.add_argument("--init-latent", help="edit an existing clip: a latent file (from --save-latent or ComfyUI's SaveLatent)")
    p.add_argument("--denoise", type=float, default=1.0, help="with --init-latent: 1 regenerates, 2/3 is SF-V level 70.54, 1/3 level 2.27")
    p.add_argument("--decode-chunk", type=int, default=0, help="frames decoded together (0: all); smaller uses less memory")
    p.add_argument("--decode-overlap", type=int, default=0, help="frames shared by consecutive decode chunks, cross-faded (full decoder only)")
    p.add_argument("--decoder", help="a tiny decoder file (from train-decoder) to decode with instead of the checkpoint's temporal VAE: much faster, less fine detail")
    p.add_argument("--length", type=int, help="frames of a long video made by extending the first clip with clips of --frames frames (see --overlap)")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="with --length: frames each clip shares with the one before")
    p.add_argument("--overlap-denoise", type=float, default=DEFAULT_OVERLAP_DENOISE, help="with --length: level the shared frames are re-noised to (2/3: SF-V level 70.54, 1/3: 2.27, 1: only the condition frame is carried)")
    p.add_argument("--crossfade", choices=CROSSFADES, default=DEFAULT_CROSSFADE, help="with --length: blend the shared frames as decoded pixels or as latents")
    p.add_argument("--condition-frame", choices=CONDITION_FRAMES, default=DEFAULT_CONDITION_FRAME, help="with --length: the frame of each clip that conditions the next")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else the CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="UNet and image encoder precision; auto: fp32 on the CPU, bf16 on CUDA where supported, else fp16")
    p.add_argument("--vae-dtype", choices=DTYPE_CHOICES, default="auto", help="VAE precision; auto: the model's, but fp32 next to fp16 (SVD's VAE overflows in fp16)")
    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="sdpa", help="PyTorch SDPA (fused kernels) or the plain eager path")
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                   help="torch.compile the UNet and the decoder (static shapes, compiled once per size); auto: default on CUDA, off on the CPU")
    p.add_argument("--out", default="outputs/clip.webp", help=".webp, .gif, .mp4, or a folder for PNG frames; several clips: NAME_000.EXT, NAME_001.EXT, ...")
    p.add_argument("--save-latent", help="also write the sampled raw latent (frames x 4 x h x w) as safetensors")
    p.set_defaults(run=run_generate)


def fill_defaults(args) -> str:
    """Unset --checkpoint: the bundled toy model and its settings; otherwise SVD's defaults.
    Returns what the filled-in size and length are the defaults of (empty: all were set)."""
    defaults, source = SVD_DEFAULTS, "SVD's defaults"
    if args.checkpoint is None:
        args.checkpoint, defaults, source = str(TOY_CHECKPOINT), TOY_DEFAULTS, "the toy model's defaults"
        print(f"no --checkpoint: using the bundled TOY SF-V model ({TOY_CHECKPOINT.name}, trained on synthetic "
              "bouncing shapes at 64x64, 8 frames). For real video pass --checkpoint svd.safetensors (see the README).", file=sys.stderr)
    filled = [name for name in defaults if getattr(args, name) is None]
    for name in filled:
        setattr(args, name, defaults[name])
    return source if set(filled) & {"width", "height", "frames"} else ""


def check_settings(args) -> None:
    """Every number that can be judged alone (against the shared ranges, sfv_core.limits), before any file is read."""
    from . import limits
    from .conditioning import check_video_size
    from .decoding import plan_chunks
    from .sampling import sampling_levels, sigma_for_denoise

    check_video_size(args.width, args.height, args.frames)
    limits.check_generation(args.width, args.height, args.frames, args.fps, args.motion_bucket, args.aug)
    limits.SEED.check(args.seed, "--seed")
    limits.STEPS.check(args.steps, "--steps")
    limits.DENOISE.check(args.denoise, "--denoise")
    limits.DECODE_CHUNK.check(args.decode_chunk, "--decode-chunk")
    limits.DECODE_OVERLAP.check(args.decode_overlap, "--decode-overlap")
    limits.LORA_STRENGTH.check(args.lora_strength, "--lora-strength")
    sampling_levels(args.steps)
    sigma_for_denoise(args.denoise)
    if args.denoise != 1.0 and not args.init_latent:
        raise InputError(f"--denoise {args.denoise} needs a latent clip to start from: add --init-latent FILE, or leave --denoise at 1.0.")
    if args.lora_strength != 1.0 and not args.sfv_lora:
        raise InputError(f"--lora-strength {args.lora_strength} needs a LoRA to scale: add --sfv-lora FILE, or leave --lora-strength out.")
    plan_chunks(args.frames, args.decode_chunk or None, decode_overlap(args))


def decode_overlap(args) -> int:
    return 0 if args.decoder else args.decode_overlap  # the tiny decoder streams with no seams


def check_outputs(args, clips: int) -> None:
    """Each output is of a type we write, and its folder takes new files: proven before the work."""
    from .files import check_writable
    from .video_io import check_output_path, clip_paths

    for path in clip_paths(args.out, clips):
        check_output_path(path)
        check_writable(path)
    if args.save_latent:
        check_writable(args.save_latent)


def read_start_images(args):
    import torch

    from .conditioning import resize_images, to_rgb
    from .video_io import load_image

    images = [to_rgb(load_image(path, fit=(args.width, args.height))) for path in args.image]
    if len({tuple(image.shape[1:3]) for image in images}) > 1:
        # Start images of different sizes cannot share a batch: fit each to the output size first.
        images = [resize_images(image, args.width, args.height, args.resize).movedim(1, -1) for image in images]
    return torch.cat(images)


def read_init_latent(args, clips: int):
    """The --init-latent clip, checked against the clips, frames and size being made."""
    from .video_io import load_latent

    if not args.init_latent:
        return None
    init = load_latent(args.init_latent, args.frames)
    expected = (clips, args.frames, init.shape[2], args.height // 8, args.width // 8)
    if tuple(init.shape) != expected:
        raise InputError(
            f"--init-latent {args.init_latent} holds {init.shape[0]} clip(s) of {init.shape[1]} frames of {init.shape[-1] * 8}x{init.shape[-2] * 8}, "
            f"but this run makes {clips} clip(s) of {args.frames} frames of {args.width}x{args.height}: set --frames, --width and --height to the clip's, with one --image per clip."
        )
    return init


def check_models(args, runtime, clips: int) -> None:
    """From headers only, before any weights are read: the checkpoint is a full model that can
    run this size, the --sfv-unet and --sfv-lora files fit it, and every stage's working memory fits beside
    the weights still to load (sfv_core.memory)."""
    from . import memory
    from .checkpoints import check_sfv_unet, inspect_full_model
    from .lora import check_lora
    from .models import check_unet_can_run
    from .tiny_decoder import check_config_fits, read_config

    base = inspect_full_model(args.checkpoint)
    if args.sfv_unet:
        check_sfv_unet(args.sfv_unet, base.unet_config, base.path)
    if args.sfv_lora:
        check_lora(args.sfv_lora, base)
    if args.decoder:
        check_config_fits(read_config(args.decoder), base.vae_config)
    check_unet_can_run(base.unet_config, args.width, args.height, args.frames, clips)
    stages = memory.generation_stages(base.unet_config, base.vae_config, runtime.dtype, runtime.vae_dtype, clips, args.frames, args.height, args.width, args.decode_chunk)
    weights = base.parameter_count * memory.element_bytes(runtime.dtype)
    memory.check_stages(stages, runtime.device, args.width, args.height, reserved=weights)


def describe_run(args, clips: int, defaults_of: str, long_video=None) -> str:
    made = f"{clips} clip{'s' if clips > 1 else ''} of {args.frames} frames at {args.width}x{args.height}, {args.steps} step{'s' if args.steps > 1 else ''}"
    if long_video is not None:
        from .extend import clips_for_length

        made = (f"{clips} video{'s' if clips > 1 else ''} of {args.length} frames at {args.width}x{args.height} from {clips_for_length(args.length, long_video)} clips of "
                f"{args.frames} frames each (overlap {long_video.overlap}), {args.steps} step{'s' if args.steps > 1 else ''} a clip")
    note = f" ({defaults_of}: set --width, --height and --frames for others)" if defaults_of else ""
    lora = f" + LoRA {args.sfv_lora} at strength {args.lora_strength:g}" if args.sfv_lora else ""
    return f"making {made}{note}, from {args.checkpoint}" + (f" + {args.sfv_unet}" if args.sfv_unet else "") + lora


def run_generate(args) -> None:
    from tqdm import tqdm

    from .decoding import plan_chunks
    from .pipeline import SFVPipeline
    from .runtime import resolve_runtime
    from .video_io import clip_paths, save_clip, save_latent

    # Everything that can be checked is checked before any model is loaded.
    defaults_of = fill_defaults(args)
    check_settings(args)
    long_video = extension_settings(args) if args.length is not None else None
    check_outputs(args, len(args.image))
    images = read_start_images(args)
    init = read_init_latent(args, images.shape[0])
    runtime = resolve_runtime(args.device, args.dtype, args.vae_dtype, args.attention, args.compile)
    check_models(args, runtime, images.shape[0])
    print(describe_run(args, images.shape[0], defaults_of, long_video), file=sys.stderr)

    pipe = SFVPipeline.from_files(args.checkpoint, args.sfv_unet, args.device, args.dtype, args.vae_dtype, args.attention, args.compile,
                                  sfv_lora=args.sfv_lora, lora_strength=args.lora_strength)
    decoder = pipe.load_decoder(args.decoder) if args.decoder else None
    settings = dict(width=args.width, height=args.height, num_frames=args.frames, fps=args.fps, motion_bucket_id=args.motion_bucket, augmentation=args.aug, variant=args.preprocess, resize=args.resize)
    if long_video is not None:
        run_long(pipe, images, args, long_video, settings, decoder)
        return
    cond, _ = pipe.condition(images, **settings)
    with tqdm(total=args.steps, desc="sample", unit="step", file=sys.stderr) as bar:
        latents = pipe.sample(cond, args.seed, args.steps, init, args.denoise, callback=lambda i: bar.update(1))
    chunks = len(plan_chunks(args.frames, args.decode_chunk or None, decode_overlap(args))) * latents.shape[0]
    with tqdm(total=chunks, desc="decode", unit="chunk", file=sys.stderr) as bar:
        frames = pipe.decode(latents, args.decode_chunk or None, decode_overlap(args), callback=lambda done, total: bar.update(1), decoder=decoder)
    for clip, path in zip(frames, clip_paths(args.out, frames.shape[0])):
        print(save_clip(clip, path, args.fps))
    if args.save_latent:
        print(save_latent(latents, args.save_latent))


def extension_settings(args):
    """--length's settings, checked before anything is loaded."""
    from .extend import ExtendSettings, clips_for_length

    for flag, value in (("--init-latent", args.init_latent), ("--save-latent", args.save_latent)):
        if value:
            raise InputError(f"{flag} does not combine with --length (a long video is streamed clip by clip): leave out one of them.")
    settings = ExtendSettings(clip_frames=args.frames, overlap=args.overlap, overlap_denoise=args.overlap_denoise, crossfade=args.crossfade, steps=args.steps,
                              condition_frame=args.condition_frame)
    clips_for_length(args.length, settings)
    return settings


def run_long(pipe, images, args, long_video, settings, decoder=None) -> None:
    """--length: clip after clip, each decoded and appended to the output file(s) as it is made."""
    from contextlib import ExitStack

    from tqdm import tqdm

    from .extend import clips_for_length, generate_long
    from .video_io import clip_paths, open_video

    condition = {key: value for key, value in settings.items() if key != "num_frames"}
    decode = dict(chunk_frames=args.decode_chunk or None, overlap=decode_overlap(args), decoder=decoder)
    paths = clip_paths(args.out, images.shape[0])
    with ExitStack() as files, tqdm(total=clips_for_length(args.length, long_video), desc="clips", unit="clip", file=sys.stderr) as bar:
        videos = [files.enter_context(open_video(path, args.fps)) for path in paths]
        for frames in generate_long(pipe, images, args.length, args.seed, long_video, condition, decode, progress=lambda done, total: bar.update(1)):
            for video, clip_frames in zip(videos, frames):
                video.append(clip_frames)
    for path in paths:
        print(path)


def _add_tiny_checkpoint(subparsers) -> None:
    p = subparsers.add_parser("tiny-checkpoint", help="write a tiny RANDOM SVD-architecture single file (tests and demos; makes noise, not video)", allow_abbrev=False)
    p.add_argument("--out", required=True, help="path of the .safetensors file to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_tiny_checkpoint)


def run_tiny_checkpoint(args) -> None:
    from .checkpoints import save_single_file
    from .models import TINY, build_random_model

    print(save_single_file(build_random_model(TINY, seed=args.seed), args.out))


def _add_extract_lora(subparsers) -> None:
    from .runtime import DTYPES

    p = subparsers.add_parser("extract-lora", help="a LoRA file from a full fine-tune (per-layer truncated SVD of tuned - base)", formatter_class=_DefaultsHelp, allow_abbrev=False)
    p.add_argument("--base", required=True, help="the SVD checkpoint the UNet was fine-tuned from (single file or diffusers folder)")
    p.add_argument("--tuned", required=True, help="the fine-tuned UNet: an SF-V UNet file (diffusers or SGM names) or a full single file")
    p.add_argument("--rank", type=int, required=True, help="LoRA rank, clipped to each layer's smaller side")
    p.add_argument("--out", required=True, help="the LoRA .safetensors to write; the per-layer report goes beside it as NAME.extraction.json")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp16", help="precision of the stored factors (the reported errors are measured with them)")
    p.set_defaults(run=run_extract_lora)


def run_extract_lora(args) -> None:
    from . import limits
    from .checkpoints import check_sfv_unet, inspect_full_model, reading_unet_state
    from .files import check_writable
    from .lora import extract_lora, report_path, save_lora, write_report
    from .runtime import DTYPES

    limits.LORA_RANK.check(args.rank, "--rank")
    if Path(args.out).suffix != ".safetensors":
        raise InputError(f"--out {args.out}: a LoRA is written as a .safetensors file; give a name ending in .safetensors.")
    check_writable(args.out)
    check_writable(report_path(args.out))
    base = inspect_full_model(args.base)
    check_sfv_unet(args.tuned, base.unet_config, base.path)
    with reading_unet_state(args.base, base.unet_config, base.path) as base_state, reading_unet_state(args.tuned, base.unet_config, base.path) as tuned_state:
        layers, report = extract_lora(base_state, tuned_state, args.rank, DTYPES[args.dtype])
    if not layers:
        raise InputError(f"{args.tuned} has the same matrix and conv weights as {args.base}: there is no change to extract (was --tuned fine-tuned from --base?).")
    print(report.table())
    metadata = {"extracted_from": Path(args.tuned).name, "base": Path(args.base).name, "relative_error": f"{report.relative_error:.6g}"}
    print(save_lora(args.out, layers, base.unet_config, metadata, DTYPES[args.dtype]))
    print(write_report(report, args.out))


def _program_name() -> str:
    """`sfv` / `sfv-core` when run as the installed command, else the module form."""
    name = Path(sys.argv[0]).name
    return name if name in ("sfv", "sfv-core") else "python -m sfv_core"


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the problem and where the options are listed."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _add_train_missing(subparsers, missing: str) -> None:
    from .train import EXTRAS_INSTALL

    p = subparsers.add_parser("train", help=f"train an SF-V generator (needs the trainer's extras: {EXTRAS_INSTALL})", add_help=False, allow_abbrev=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(args):
        raise InputError(f"the trainer needs {missing}, which is not installed: {EXTRAS_INSTALL}")

    p.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=_program_name(), description="SF-V: one-step image-to-video on SVD-family weights.", allow_abbrev=False)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_generate(subparsers)
    _add_tiny_checkpoint(subparsers)
    _add_extract_lora(subparsers)
    try:
        from .train.cli import add_train_parser
    except ImportError as error:  # the trainer's extra requirements are not installed
        _add_train_missing(subparsers, error.name or "its extra requirements")
    else:
        add_train_parser(subparsers)
    return parser


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (a handler holding the stream would not follow a redirect)."""

    def emit(self, record) -> None:
        print(self.format(record), file=sys.stderr)


def _log_to_stderr() -> None:
    """sfv_core's log (what the run uses, fallbacks, fp32 redos) on stderr, once."""
    logger = logging.getLogger("sfv")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    try:
        args.run(args)
    except SFVError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
