"""Exceptions with messages that say what to fix. Torch-free: shared by engine, server and client."""


class MedVLSAM2Error(Exception):
    """Base class; ``code`` is the stable machine-readable name used by the server protocol."""

    code = "error"


class InputError(MedVLSAM2Error, ValueError):
    """The caller gave bad input (image, prompt, file); the message says what to change."""

    code = "bad_input"


class CheckpointError(MedVLSAM2Error):
    """A weights file is missing, corrupted, unsafe or for another architecture."""

    code = "bad_checkpoint"


class UnknownObjectError(InputError, KeyError):
    code = "unknown_object"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown object"


class Cancelled(MedVLSAM2Error):
    """Raised when a CancelToken was set; work done so far is discarded by the caller."""

    code = "cancelled"



class CapabilityError(InputError):
    """The loaded model cannot do what was asked; the message names what to load instead."""

    code = "not_capable"
