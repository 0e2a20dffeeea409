"""A pure-Python signal, so the panel logic can be tested without Qt."""

from __future__ import annotations

from typing import Any, Callable


class Signal:
    """Call every connected slot, in connection order, with the emitted arguments."""

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> None:
        """Connect ``slot``; connecting the same slot twice calls it once."""
        if slot not in self._slots:
            self._slots.append(slot)

    def disconnect(self, slot: Callable[..., Any] | None = None) -> None:
        """Disconnect ``slot``, or every slot when ``slot`` is None."""
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        """Call the slots; a slot that disconnects itself does not disturb the others."""
        for slot in list(self._slots):
            slot(*args)

    def __len__(self) -> int:
        return len(self._slots)
