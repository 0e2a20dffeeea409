"""A thread-safe cancellation token, honoured between slices and between tokens. Torch-free."""

from __future__ import annotations

import threading

from ..errors import Cancelled


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user; the previous result is kept")


def check(token: CancelToken | None) -> None:
    """Raise ``Cancelled`` if ``token`` is set; ``None`` means not cancellable."""
    if token is not None:
        token.raise_if_cancelled()
