"""`python -m sfv_core train`: the trainer's command line (hooked in by sfv_core.cli).

Run it under `accelerate launch` for several GPUs; plain `python -m sfv_core train` is one
process (GPU if there is one, else CPU). The help lists every config field, generated from
the config dataclasses (`config.help_text`).
"""

from __future__ import annotations

import argparse
import logging

from .config import help_text, load_config, to_yaml

DESCRIPTION = """Fine-tune an SVD img2vid UNet into an SF-V one-step generator (or train it with the EDM
diffusion loss). Settings come from --config (see configs/train_sfv.yaml, the paper's defaults),
then --set overrides. Resumes from OUTPUT_DIR/checkpoints/latest when present.

multi-GPU:  accelerate launch --config_file configs/accelerate_ddp.yaml -m sfv_core train --config FILE"""


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train an SF-V generator (adversarial fine-tuning of SVD); see train --help",
        description=DESCRIPTION,
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--config", help="YAML config file (sections and fields below); omitted fields keep their defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set run.steps=10 or --set steps=10 (bare names that are unique); repeatable; values are YAML")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--export-only", action="store_true", help="do not train: export the EMA generator of the latest checkpoint")
    mode.add_argument("--cache-only", action="store_true", help="do not train: only build data.latent_cache (the latent pre-pass)")
    mode.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(run=run_train)
    return p


def run_train(args) -> None:

    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(config))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from .trainer import Trainer

    trainer = Trainer(config)
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
