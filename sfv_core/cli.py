"""`python -m sfv_core ...`: generate a clip, write a tiny test checkpoint, train."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import SFVError

ASSETS = Path(__file__).parent / "assets"
DEMO_IMAGE = ASSETS / "start.png"
# `generate` with no --checkpoint runs the bundled toy SF-V model (made by
# `python -m sfv_core.toy.experiment`) on a held-out frame of its synthetic data, at the size
# and length it was trained for. With a checkpoint, SVD's own defaults apply.
TOY_CHECKPOINT = ASSETS / "sfv_toy.safetensors"
TOY_START_IMAGE = ASSETS / "toy_start.png"
TOY_DEFAULTS = dict(image=[str(TOY_START_IMAGE)], width=64, height=64, frames=8)
SVD_DEFAULTS = dict(image=[str(DEMO_IMAGE)], width=1024, height=576, frames=14)


def _add_generate(subparsers) -> None:
    from .conditioning import RESIZE_MODES, VARIANTS
    from .runtime import ATTENTION_CHOICES, DTYPE_CHOICES
    from .sampling import MAX_STEPS

    p = subparsers.add_parser("generate", help="image -> video in one UNet pass", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", help="SVD-family single file (.safetensors) or diffusers folder (default: the bundled toy SF-V model)")
    p.add_argument("--sfv-unet", help="SF-V UNet file that replaces the checkpoint's UNet")
    p.add_argument("--image", nargs="+", help="start image(s); one clip per image (default: a bundled image)")
    p.add_argument("--frames", type=int, help="default 14 (the toy model: 8)")
    p.add_argument("--width", type=int, help="multiple of 8 (64 is safest); default 1024 (the toy model: 64)")
    p.add_argument("--height", type=int, help="multiple of 8 (64 is safest); default 576 (the toy model: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1, help=f"UNet passes, 1 to {MAX_STEPS}, on SF-V's noise levels")
    p.add_argument("--fps", type=int, default=7, help="frame rate the model is told (and the output's)")
    p.add_argument("--motion-bucket", type=int, default=127, help="motion_bucket_id: more motion when higher")
    p.add_argument("--aug", type=float, default=0.02, help="noise augmentation of the start frame")
    p.add_argument("--resize", choices=RESIZE_MODES, default="crop", help="how the image is fitted to width x height")
    p.add_argument("--preprocess", choices=VARIANTS, default="reference", help="reference (SVD/diffusers) or ComfyUI's native SVD node")
    p.add_argument("--init-latent", help="edit an existing clip: a latent file (from --save-latent or ComfyUI's SaveLatent)")
    p.add_argument("--denoise", type=float, default=1.0, help="with --init-latent: 1 regenerates, 2/3 is SF-V level 70.6, 1/3 level 2.27")
    p.add_argument("--decode-chunk", type=int, default=0, help="frames decoded together (0: all); smaller uses less memory")
    p.add_argument("--decode-overlap", type=int, default=0, help="frames shared by consecutive decode chunks, cross-faded")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto")
    p.add_argument("--vae-dtype", choices=DTYPE_CHOICES, default="auto")
    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="sdpa")
    p.add_argument("--out", default="outputs/clip.webp", help=".webp, .gif, .mp4, or a folder for PNG frames")
    p.add_argument("--save-latent", help="also write the sampled raw latent (frames x 4 x h x w) as safetensors")
    p.set_defaults(run=run_generate)


def fill_defaults(args) -> None:
    """Unset --checkpoint: the bundled toy model and its settings; otherwise SVD's defaults."""
    defaults = SVD_DEFAULTS
    if args.checkpoint is None:
        args.checkpoint, defaults = str(TOY_CHECKPOINT), TOY_DEFAULTS
        print(f"no --checkpoint: using the bundled TOY SF-V model ({TOY_CHECKPOINT.name}, trained on synthetic "
              "bouncing shapes at 64x64, 8 frames). For real video pass --checkpoint svd.safetensors (see the README).", file=sys.stderr)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def check_values(args) -> None:
    """Every number against the shared ranges (sfv_core.limits), before any work."""
    from . import limits
    from .errors import InputError

    limits.check_generation(args.width, args.height, args.frames, args.fps, args.motion_bucket, args.aug)
    limits.SEED.check(args.seed, "--seed")
    limits.STEPS.check(args.steps, "--steps")
    limits.DENOISE.check(args.denoise, "--denoise")
    limits.DECODE_CHUNK.check(args.decode_chunk, "--decode-chunk")
    limits.DECODE_OVERLAP.check(args.decode_overlap, "--decode-overlap")
    if args.denoise != 1.0 and not args.init_latent:
        raise InputError("--denoise below 1 re-renders an existing clip: also pass --init-latent (a latent file from --save-latent or SaveLatent).")


def check_memory(args, clips: int) -> None:
    """Every stage's working memory, and the weights still to load, against free memory: before loading."""
    from . import memory
    from .checkpoints import inspect_checkpoint
    from .runtime import resolve_runtime

    runtime = resolve_runtime(args.device, args.dtype, args.vae_dtype, args.attention)
    info = inspect_checkpoint(args.checkpoint)
    stages = memory.generation_stages(info.unet_config, info.vae_config, runtime.dtype, runtime.vae_dtype, clips, args.frames, args.height, args.width, args.decode_chunk)
    weights = info.parameter_count * memory.element_bytes(runtime.dtype)
    memory.check_stages(stages, runtime.device, args.width, args.height, reserved=weights)


def run_generate(args) -> None:
    import torch
    from tqdm import tqdm

    from .conditioning import resize_images, to_rgb
    from .decoding import plan_chunks
    from .pipeline import SFVPipeline
    from .video_io import check_output_path, clip_paths, load_image, load_latent, save_clip, save_latent

    fill_defaults(args)
    check_values(args)
    check_output_path(args.out)
    check_memory(args, len(args.image))
    init = load_latent(args.init_latent, args.frames) if args.init_latent else None
    images = [to_rgb(load_image(path, fit=(args.width, args.height))) for path in args.image]
    if len({tuple(image.shape[1:3]) for image in images}) > 1:
        # Start images of different sizes cannot share a batch: fit each to the output size first.
        images = [resize_images(image, args.width, args.height, args.resize).movedim(1, -1) for image in images]
    images = torch.cat(images)
    pipe = SFVPipeline.from_files(args.checkpoint, args.sfv_unet, args.device, args.dtype, args.vae_dtype, args.attention)
    settings = dict(width=args.width, height=args.height, num_frames=args.frames, fps=args.fps, motion_bucket_id=args.motion_bucket, augmentation=args.aug, variant=args.preprocess, resize=args.resize)
    cond, _ = pipe.condition(images, **settings)
    with tqdm(total=args.steps, desc="sample", unit="step", file=sys.stderr) as bar:
        latents = pipe.sample(cond, args.seed, args.steps, init, args.denoise, callback=lambda i: bar.update(1))
    chunks = len(plan_chunks(args.frames, args.decode_chunk or None, args.decode_overlap)) * latents.shape[0]
    with tqdm(total=chunks, desc="decode", unit="chunk", file=sys.stderr) as bar:
        frames = pipe.decode(latents, args.decode_chunk or None, args.decode_overlap, callback=lambda done, total: bar.update(1))
    for clip, path in zip(frames, clip_paths(args.out, frames.shape[0])):
        print(save_clip(clip, path, args.fps))
    if args.save_latent:
        print(save_latent(latents, args.save_latent))


def _add_tiny_checkpoint(subparsers) -> None:
    p = subparsers.add_parser("tiny-checkpoint", help="write a tiny RANDOM SVD-architecture single file (tests and demos; makes noise, not video)")
    p.add_argument("--out", required=True, help="path of the .safetensors file to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_tiny_checkpoint)


def run_tiny_checkpoint(args) -> None:
    from .checkpoints import save_single_file
    from .models import TINY, build_random_model

    print(save_single_file(build_random_model(TINY, seed=args.seed), args.out))


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the problem and where the options are listed."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _add_train_missing(subparsers, missing: str) -> None:
    from .train import EXTRAS_INSTALL

    p = subparsers.add_parser("train", help=f"train an SF-V generator (needs the trainer's extras: {EXTRAS_INSTALL})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(args):
        from .errors import InputError

        raise InputError(f"the trainer needs {missing}, which is not installed: {EXTRAS_INSTALL}")

    p.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m sfv_core", description="SF-V: one-step image-to-video on SVD-family weights.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_generate(subparsers)
    _add_tiny_checkpoint(subparsers)
    try:
        from .train.cli import add_train_parser
    except ImportError as error:  # the trainer's extra requirements are not installed
        _add_train_missing(subparsers, error.name or "its extra requirements")
    else:
        add_train_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except SFVError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
