"""Session: one loaded volume, one model (``core``); its undo history, prompt parsing, per-slice rules and
propagation strategies live beside it, one concept per module."""

from .core import HISTORY_MB, Session

__all__ = ["HISTORY_MB", "Session"]
