"""SF-V: single-forward image-to-video on Stable Video Diffusion weights.

The library behind the ComfyUI nodes and the `python -m sfv_core` command line.
It never imports ComfyUI. Import submodules directly; this package stays light.
"""

from .errors import CheckpointError, InputError, SFVError

__version__ = "0.1.0"
__all__ = ["SFVError", "CheckpointError", "InputError", "__version__"]
