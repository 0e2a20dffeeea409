"""The panel's package installation (Slicer-only: needs qt and slicer): one consent dialog listing every
package and its size, then ``installer.InstallRun`` in child processes of Slicer's Python with a progress
dialog and Cancel; the main thread only polls the child's output."""

from __future__ import annotations

from typing import Callable

import qt
import slicer

POLL_MS = 100


class PackageInstall:
    """One installation; keep a reference until ``on_finished`` ran."""

    def __init__(self, parent, needed: list[str], on_installed: Callable[[], None],
                 on_failed: Callable[[str], None]) -> None:
        from . import dependencies, installer

        self.needed, self.on_installed, self.on_failed = needed, on_installed, on_failed
        self.runner = installer.SubprocessRunner()
        self.run = installer.InstallRun(dependencies.plan(needed), self.runner, self._progress, self._done)
        self.dialog = qt.QProgressDialog("Preparing...", "Cancel", 0, len(self.run.steps), parent)
        self.dialog.windowTitle = "MedVLSAM2: installing Python packages"
        self.dialog.windowModality = qt.Qt.WindowModal  # Slicer keeps drawing; Start cannot be pressed twice
        self.dialog.minimumDuration = 0
        self.dialog.connect("canceled()", self.run.cancel)
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.runner.poll)

    def start(self) -> bool:
        """Ask once; returns False when the user declined (nothing installed)."""
        from . import dependencies

        if not slicer.util.confirmOkCancelDisplay(dependencies.consent_message(self.needed),
                                                  windowTitle="MedVLSAM2: install Python packages"):
            return False
        self.timer.start()
        self.dialog.show()
        self.run.start()
        return True

    def _progress(self, done: int, total: int, label: str, line: str) -> None:
        self.dialog.maximum, self.dialog.value = total, done
        self.dialog.labelText = f"Step {min(done + 1, total)} of {total}: {label}\n{line[-120:]}" if label else "Done"

    def _done(self, ok: bool, message: str) -> None:
        import importlib

        self.timer.stop()
        self.dialog.close()
        importlib.invalidate_caches()  # the new packages are importable without a restart
        if ok:
            self.on_installed()
        else:
            self.on_failed(message)
