"""The module's self-test under slicer-core: it fails, naming the piece, when the packages, the panel or the
server are missing, and with everything present its steps (Start -> server -> point -> undo -> text ->
question, each compared with a reference session) run on a real local server.

slicer-core has no Qt, so the panel's buttons are pressed by ``LogicDriver``: the logic calls the panel makes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

slicer = pytest.importorskip("slicer")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

import vtk  # noqa: E402

from MedVLSAM2SlicerLib import selftest  # noqa: E402
from MedVLSAM2SlicerLib.logic import MedVLSAM2Logic  # noqa: E402
from slicer_scene import scene_with_logics  # noqa: E402


class LogicDriver:
    """What the panel's Start, Point, Undo, Segment text and Ask buttons call, without Qt."""

    def __init__(self, logic: MedVLSAM2Logic, python: str = "") -> None:
        self.logic, self.python = logic, python

    def pump(self) -> None:
        self.logic.controller.worker.deliver(0.05)

    def start(self, volume, segmentation) -> None:
        self.logic.start(selftest.MODEL, "cpu", "", "", self.python,
                         on_ready=lambda: self.logic.open_session(volume, segmentation))

    def click(self, segment_id: str, ras, negative: bool) -> None:
        node = self.logic.prompt_node(slicer.mrmlScene, "point")
        node.AddControlPoint(vtk.vtkVector3d(*ras))
        self.logic.submit_drawn_prompt("point", node, segment_id, negative)

    def undo(self) -> None:
        self.logic.controller.undo()

    def text(self, prompt: str) -> None:
        self.logic.controller.segment_text(prompt)

    def ask(self, question: str) -> None:
        self.logic.controller.ask(question)


@pytest.fixture
def logic(monkeypatch, tmp_path):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # the server log goes to ~/.cache/medvlsam2
    scene_with_logics()
    logic = MedVLSAM2Logic()
    yield logic
    logic.shutdown()


def test_a_missing_package_fails_and_names_it(monkeypatch):
    for name in ("torch", "sam2"):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, name, None)  # find_spec answers None: not installed
            with pytest.raises(selftest.SelfTestFailure, match=rf"^packages: .*{name}") as info:
                selftest.module_self_test(SimpleNamespace(delayDisplay=print))
            assert info.value.piece == "packages"


def test_a_panel_that_cannot_be_built_fails_and_says_so():
    scene_with_logics()  # slicer-core: no medvlsam2slicer module, no Qt: the panel cannot exist
    with pytest.raises(selftest.SelfTestFailure, match="^widget: the MedVLSAM2 panel could not be built"):
        selftest.module_self_test(SimpleNamespace(delayDisplay=print))


def test_a_server_that_cannot_start_fails_with_its_error(logic, tmp_path):
    no_engine = tmp_path / "python"  # a Python that cannot run the server
    no_engine.write_text("#!/bin/sh\necho 'No module named torch' >&2\nexit 1\n")
    no_engine.chmod(0o755)
    with pytest.raises(selftest.SelfTestFailure, match="^server: ") as info:
        selftest.run(LogicDriver(logic, python=str(no_engine)), report=lambda _: None)
    assert "No module named torch" in str(info.value)  # the server's own log line is in the message


def test_a_wrong_result_fails_the_step_that_produced_it(logic, monkeypatch):
    """The comparison is real: a session whose click lands one voxel off fails at "point"."""
    pytest.importorskip("torch")
    from medvlsam2.client import RemoteSession

    add_points = RemoteSession.add_points

    def shifted(self, obj, points, labels):
        return add_points(self, obj, [[p[0] + 9, p[1], p[2]] for p in points], labels)

    monkeypatch.setattr(RemoteSession, "add_points", shifted)
    with pytest.raises(selftest.SelfTestFailure, match="^point: the segment differs"):
        selftest.run(LogicDriver(logic), report=lambda _: None)


def test_every_step_runs_on_a_real_local_server_and_matches_the_reference(logic):
    pytest.importorskip("torch")
    steps = []
    summary = selftest.run(LogicDriver(logic), report=steps.append)
    assert steps[-1] == "Self-test passed" and len(steps) == 6
    assert summary["clicks"] == 2 and summary["voxels"] > 0 and summary["answer_chars"] > 0
    assert summary["text_segments"] >= 1 and summary["text_voxels"] > 0  # a real mask compared, not two empty lists
    assert logic.connection.server is not None and logic.connection.server.is_alive()


def test_the_smoke_script_fails_outside_slicer_and_names_why():
    """Run as Slicer would, but by a Python without the application: exit 1 and a named failure, never 0."""
    run = subprocess.run([sys.executable, str(ROOT / "Testing" / "Slicer" / "smoke.py")], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "MedVLSAM2Slicer")})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "smoke: FAILED" in run.stderr and "passed" not in run.stdout
