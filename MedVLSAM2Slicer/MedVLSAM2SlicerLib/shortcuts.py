"""Keyboard shortcuts of the panel, the same letters as SlicerNNInteractive's prompt tools.

They are module-scoped: while the module is shown, the widget creates one QShortcut per key on the module
panel and on each slice view (context ``WidgetWithChildrenShortcut``, never on the main window) and deletes
them when the module is left, so Edit > Undo (Ctrl+Z) and Escape keep their meaning in Slicer. This
module stays Qt-free.
"""

from __future__ import annotations

# action -> (Qt key sequence, objectName of the button it triggers)
SHORTCUTS: dict[str, tuple[str, str]] = {
    "point": ("P", "pointButton"),
    "box": ("B", "boxButton"),
    "lasso": ("L", "lassoButton"),
    "scribble": ("S", "scribbleButton"),
    "toggle_sign": ("T", "negativeButton"),
    "run_text": ("Ctrl+Return", "runTextButton"),
    "propagate": ("Ctrl+Shift+P", "propagateButton"),
    "next_segment": ("Ctrl+Shift+N", "nextSegmentButton"),
}
# keys Slicer itself binds application-wide; a module must not take them over
RESERVED = ("Ctrl+Z", "Ctrl+Y", "Ctrl+Shift+Z", "Escape", "Ctrl+S", "Ctrl+O")


def button_label(text: str, action: str) -> str:
    """Button text with its shortcut, e.g. ``"Box (B)"``."""
    return f"{text} ({SHORTCUTS[action][0]})"


def strip_shortcut(label: str) -> str:
    """Inverse of ``button_label`` (used when the shortcuts are removed on module exit)."""
    if label.endswith(")") and " (" in label:
        return label[: label.rindex(" (")]
    return label
