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
# Where `python -m sfv_core.toy.decoder --ship` puts the tiny decoder it distils from the toy
# model's VAE (for `generate --decoder`); the demo's default decode stays the full decoder.
TOY_TINY_DECODER = ASSETS / "sfv_toy_tiny_decoder.safetensors"
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
    p.add_argument("--decode-overlap", type=int, default=0, help="frames shared by consecutive decode chunks, cross-faded (full decoder only)")
    p.add_argument("--decoder", help="a tiny decoder file (from train-decoder) to decode with instead of the checkpoint's temporal VAE: much faster, less fine detail")
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


def run_generate(args) -> None:
    import torch
    from tqdm import tqdm

    from .conditioning import resize_images, to_rgb
    from .decoding import plan_chunks
    from .pipeline import SFVPipeline
    from .tiny_decoder import read_config
    from .video_io import check_output_path, clip_paths, load_image, load_latent, save_clip, save_latent

    fill_defaults(args)
    check_output_path(args.out)
    overlap = 0 if args.decoder else args.decode_overlap  # the tiny decoder streams with no seams
    chunk_plan = plan_chunks(args.frames, args.decode_chunk or None, overlap)  # checks the settings before any model loads
    if args.decoder:
        read_config(args.decoder)
    images = [to_rgb(load_image(path)) for path in args.image]
    if len({tuple(image.shape[1:3]) for image in images}) > 1:
        # Start images of different sizes cannot share a batch: fit each to the output size first.
        images = [resize_images(image, args.width, args.height, args.resize).movedim(1, -1) for image in images]
    images = torch.cat(images)
    pipe = SFVPipeline.from_files(args.checkpoint, args.sfv_unet, args.device, args.dtype, args.vae_dtype, args.attention)
    decoder = pipe.load_decoder(args.decoder) if args.decoder else None
    settings = dict(width=args.width, height=args.height, num_frames=args.frames, fps=args.fps, motion_bucket_id=args.motion_bucket, augmentation=args.aug, variant=args.preprocess, resize=args.resize)
    cond, _ = pipe.condition(images, **settings)
    init = load_latent(args.init_latent, args.frames) if args.init_latent else None
    with tqdm(total=args.steps, desc="sample", unit="step", file=sys.stderr) as bar:
        latents = pipe.sample(cond, args.seed, args.steps, init, args.denoise, callback=lambda i: bar.update(1))
    with tqdm(total=len(chunk_plan) * latents.shape[0], desc="decode", unit="chunk", file=sys.stderr) as bar:
        frames = pipe.decode(latents, args.decode_chunk or None, overlap, callback=lambda done, total: bar.update(1), decoder=decoder)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sfv_core", description="SF-V: one-step image-to-video on SVD-family weights.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_generate(subparsers)
    _add_tiny_checkpoint(subparsers)
    try:
        from .train.cli import add_train_parser
    except ImportError:  # the trainer's extra requirements are not installed
        add_train_parser = None
    if add_train_parser is not None:
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
