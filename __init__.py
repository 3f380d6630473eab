"""ComfyUI-SFV: one-step image-to-video (SF-V) nodes for ComfyUI."""

# ComfyUI imports this folder as a package. A test runner may import this file on its own
# (e.g. pytest looking for setup_module in a folder named ComfyUI-SFV): then there is no
# package to import the nodes from, and nothing is exported.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
