"""SF-V trainer: adversarial fine-tuning of an SVD UNet into a one-step video generator, and the
distillation of a tiny decoder from the checkpoint's temporal VAE decoder.

Modules: config (dataclasses + YAML + --help), data (videos / frame folders -> clips),
encoding (clips -> latents + conditioning, latent cache), discriminator (frozen UNet encoder
+ heads), losses, ema, checkpointing (atomic run checkpoints), logs, loop (what every trainer
shares: accelerate, data, the loop, checkpoints), trainer (SF-V's networks, loss, export),
decoder (the tiny decoder's), cli (`python -m sfv_core train` / `train-decoder`), state
(the resumable state, no pickles). Import submodules directly; this stays light.
"""

EXTRAS_INSTALL = "pip install -r requirements.txt -r requirements-train.txt"  # what adds accelerate, pyyaml
