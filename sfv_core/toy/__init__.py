"""SF-V in miniature: synthetic videos, a weight-free video metric, and the experiment runner.

    python -m sfv_core.toy.experiment --out outputs/toy

trains a tiny SVD-architecture model on generated clips (bouncing shapes on textured
backgrounds), pretrains it as a video diffusion model (EDM), distils it with the SF-V recipe
and writes the miniature of the paper's Table 1 and head ablation.
"""
