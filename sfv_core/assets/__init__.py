"""The bundled demo's files: the toy SF-V model and its held-out start frame (written by
`python -m sfv_core.toy.experiment --ship`), and the start image SVD's defaults use; and the
miniature's pretrained SVD, which its SF-V stages start from.

The command line reads them; the miniature writes the first two under these names."""

from pathlib import Path

FOLDER = Path(__file__).parent
TOY_CHECKPOINT = FOLDER / "sfv_toy.safetensors"
TOY_START_IMAGE = FOLDER / "toy_start.png"
DEMO_IMAGE = FOLDER / "start.png"
# Where `python -m sfv_core.toy.decoder --ship` puts the tiny decoder it distils from the toy
# model's VAE (for `generate --decoder`); the demo's default decode stays the full decoder.
TOY_TINY_DECODER = FOLDER / "sfv_toy_tiny_decoder.safetensors"
# The miniature's teacher (the toy SVD after its diffusion pretraining, fp32, its settings in
# the metadata): `toy.experiment` starts its SF-V stages from it unless --set teacher=train,
# as a real SF-V run starts from svd.safetensors. Written by --ship --set teacher=train.
TOY_TEACHER = FOLDER / "sfv_toy_teacher.safetensors"
