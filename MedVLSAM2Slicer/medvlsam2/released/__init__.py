"""Released text-prompted 3D CT segmenters (M3D-LaMed, SegVol, VoxTell) behind one small protocol.

``base`` holds the shared contract (``TextSegmenter``, ``TargetMask``); each family lives in its own
modules and is loaded by ``medvlsam2.factory`` from a folder in the published layout.
"""

from .base import TargetMask, TextSegmenter

__all__ = ["TargetMask", "TextSegmenter"]
