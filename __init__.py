"""ComfyUI-SFV: one-step image-to-video (SF-V) nodes for ComfyUI."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
