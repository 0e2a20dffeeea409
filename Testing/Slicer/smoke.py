"""Smoke test inside the Slicer application: load the module, build its panel, run its self-test.

    Slicer --no-main-window --python-script Testing/Slicer/smoke.py

Exits 0 only when the self-test ran every step and passed, 1 otherwise, naming the missing piece
(packages, widget, server, point, undo, text, question); nothing is skipped. CI runs it when a ``Slicer``
executable is on the PATH. The self-test starts a local server with the shipped demo bundle on a
synthetic phantom (nothing is downloaded), so Slicer's Python needs torch, sam2 and the server's packages
(press Start in the module once, or install them).
"""

import sys
import traceback
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer"


def main() -> int:
    import qt
    import slicer

    if not hasattr(slicer.modules, "medvlsam2slicer"):  # not installed as an extension: load it from the checkout
        factory = slicer.app.moduleManager().factoryManager()
        factory.registerModule(qt.QFileInfo(str(MODULE_DIR / "MedVLSAM2Slicer.py")))
        factory.loadModules(["MedVLSAM2Slicer"])
    if not hasattr(slicer.modules, "medvlsam2slicer"):
        print("smoke: the MedVLSAM2Slicer module did not load", file=sys.stderr)
        return 1
    import MedVLSAM2Slicer

    test = MedVLSAM2Slicer.MedVLSAM2SlicerTest()
    test.runTest()
    print("smoke: MedVLSAM2Slicer self-test passed")
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception as exc:
        traceback.print_exc()
        print(f"smoke: FAILED ({getattr(exc, 'piece', type(exc).__name__)}): {exc}", file=sys.stderr)
        code = 1
    import slicer

    slicer.util.exit(code) if hasattr(slicer.util, "exit") else sys.exit(code)
