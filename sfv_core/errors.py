"""Errors a user can act on. Each message names the problem and the fix."""


class SFVError(Exception):
    """Base class: bad input the user can fix (never a bug in sfv_core)."""


class CheckpointError(SFVError):
    """A weights file or folder that is not what was asked for."""


class InputError(SFVError):
    """An image, size, frame count or latent that does not fit."""


class OutputError(SFVError):
    """An output that cannot be written (no space, no permission, a file in the way)."""
