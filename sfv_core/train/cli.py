"""`python -m sfv_core train` and `train-decoder`: the trainers' command lines (hooked in by sfv_core.cli).

Run it under `accelerate launch` for several GPUs; plain `python -m sfv_core train` is one
process (GPU if there is one, else CPU). The help lists every config field, generated from
the config dataclasses (`config.help_text`).
"""

from __future__ import annotations

import argparse
import logging

from .config import TrainConfig, help_text, load_config, to_yaml

DESCRIPTION = """Fine-tune an SVD img2vid UNet into an SF-V one-step generator (or train it with the EDM
diffusion loss). Settings come from --config (see configs/train_sfv.yaml, the paper's defaults),
then --set overrides. Resumes from OUTPUT_DIR/checkpoints/latest when present.

multi-GPU:  accelerate launch --config_file configs/accelerate_ddp.yaml -m sfv_core train --config FILE"""

DECODER_DESCRIPTION = """Distil a tiny decoder from a checkpoint's own temporal VAE decoder: the teacher decodes
VAE latents of your videos (data.path), the student (decoder.*) learns its pixels, edges and
frame-to-frame changes. Same data, latent cache, accelerate launch and checkpoints as train;
resumes from OUTPUT_DIR/checkpoints/latest. Writes OUTPUT_DIR/export/sfv_tiny_decoder.safetensors
(for generate --decoder, or models/vae_approx in ComfyUI).

example:  python -m sfv_core train-decoder --set model.path=svd.safetensors --set data.path=videos/"""


def add_train_parser(subparsers) -> None:
    from .decoder import DecoderTrainConfig

    _add_trainer_command(subparsers, "train", "train an SF-V generator (adversarial fine-tuning of SVD); see train --help", DESCRIPTION, TrainConfig)
    _add_trainer_command(subparsers, "train-decoder", "distil a tiny fast decoder from the checkpoint's temporal VAE decoder; see train-decoder --help",
                DECODER_DESCRIPTION, DecoderTrainConfig)


def _add_trainer_command(subparsers, name: str, summary: str, description: str, config_type: type) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=help_text(config_type),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--config", help="YAML config file (sections and fields below); omitted fields keep their defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set run.steps=10 or --set steps=10 (bare names that are unique); repeatable; values are YAML")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--export-only", action="store_true", help="do not train: export the latest checkpoint (the SF-V trainer: its EMA generator)")
    mode.add_argument("--cache-only", action="store_true", help="do not train: only build data.latent_cache (the latent pre-pass)")
    mode.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(run=run_train, config_type=config_type)
    return p


def make_trainer(config):
    if isinstance(config, TrainConfig):
        from .trainer import Trainer

        return Trainer(config)
    from .decoder import DecoderTrainer

    return DecoderTrainer(config)


def require_extras() -> None:
    """The trainer's extra requirements, or one line saying how to install them."""
    from ..errors import InputError
    from . import EXTRAS_INSTALL

    try:
        import accelerate  # noqa: F401
    except ImportError as error:
        raise InputError(f"the trainer needs {error.name}, which is not installed: {EXTRAS_INSTALL}") from None


def run_train(args) -> None:
    config = load_config(args.config, args.overrides, getattr(args, "config_type", TrainConfig))
    if args.print_config:
        print(to_yaml(config))
        return
    require_extras()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    trainer = make_trainer(config)
    if args.export_only:
        if not trainer.resume():
            from ..errors import InputError

            raise InputError(f"no checkpoint in {config.run.output_dir}/checkpoints to export")
    elif args.cache_only:
        if not config.data.latent_cache:
            from ..errors import InputError

            raise InputError("--cache-only needs data.latent_cache (a folder for the shards)")
        trainer.setup_data()
        return
    else:
        trainer.train()
    for path in trainer.export():
        print(path)
