"""SF-V trainer: adversarial fine-tuning of an SVD UNet into a one-step video generator.

Modules: config (dataclasses + YAML + --help), data (videos / frame folders -> clips),
encoding (clips -> latents + conditioning, latent cache), discriminator (frozen UNet encoder
+ heads), losses, ema, checkpointing (atomic run checkpoints), logs, trainer (the loop,
export), cli (`python -m sfv_core train`), state (its own resumable state, no pickles).
Import submodules directly; this stays light.
"""

EXTRAS_INSTALL = "pip install -r requirements.txt -r requirements-train.txt"  # what adds accelerate, pyyaml
