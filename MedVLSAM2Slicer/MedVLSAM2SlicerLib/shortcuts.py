"""Keyboard shortcuts of the panel: one map, shown on the buttons, installed on module enter and
removed on exit (the widget owns the QShortcut objects; this module stays Qt-free)."""

from __future__ import annotations

# action -> (Qt key sequence, objectName of the button it triggers). Plain letters are avoided: slice
# views already use them (b/f step slices); Ctrl+Z matches the Segment Editor's undo.
SHORTCUTS: dict[str, tuple[str, str]] = {
    "positive_point": ("Alt+1", "positivePointButton"),
    "negative_point": ("Alt+2", "negativePointButton"),
    "box": ("Alt+3", "boxButton"),
    "run_text": ("Ctrl+Return", "runTextButton"),
    "propagate": ("Ctrl+Shift+P", "propagateButton"),
    "undo": ("Ctrl+Z", "undoButton"),
    "reset": ("Ctrl+Shift+R", "resetButton"),
    "next_segment": ("Alt+4", "nextSegmentButton"),
    "cancel": ("Escape", "cancelButton"),
    "ask": ("Ctrl+Shift+Return", "askButton"),
}


def button_label(text: str, action: str) -> str:
    """Button text with its shortcut, e.g. ``"Undo (Ctrl+Z)"``."""
    return f"{text} ({SHORTCUTS[action][0]})"


def strip_shortcut(label: str) -> str:
    """Inverse of ``button_label`` (used when the shortcuts are removed on module exit)."""
    if label.endswith(")") and " (" in label:
        return label[: label.rindex(" (")]
    return label
