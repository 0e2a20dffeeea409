"""The module's self-test: builds the real panel, presses Start (a local server with the shipped demo
bundle, 24 MB, trained on phantoms), places points through Markups, undoes one through the segmentation's
history, runs a text prompt and asks a question, comparing every result with an in-process session on the
same weights (the demo bundle finds the phantom's liver, so the text step compares a real mask).

Nothing is skipped: a missing package, a panel that cannot be built or a server that does not start is a
``SelfTestFailure`` whose message starts with the missing piece ("packages", "widget", "server", ...).
Called from ``MedVLSAM2SlicerTest`` (Developer Tools > Reload and Test) and ``Testing/Slicer/smoke.py``;
``run`` takes the driver that presses the buttons, so the same steps run under slicer-core in pytest.
"""

from __future__ import annotations

from typing import Callable

import slicer
import vtk

MODEL = "demo"  # the panel's model entry: the shipped bundle (connection.demo_weights)
SHAPE, SPACING = (8, 64, 64), (5.6, 5.6, 5.0)
CLICKS = (((32, 32, 4), 1), ((20, 44, 4), 1))  # (i, j, k), label: the second (it grows the mask) is undone
TEXT, QUESTION = "liver", "Where is the lesion?"
TIMEOUT_S = 300.0


class SelfTestFailure(AssertionError):
    """The self-test could not check something; ``piece`` names what is missing or wrong."""

    def __init__(self, piece: str, detail: str) -> None:
        super().__init__(f"{piece}: {detail}")
        self.piece = piece


def require_packages() -> None:
    """Everything the local server imports must be there: Start would otherwise ask to install it."""
    from .dependencies import CLIENT_REQUIREMENTS, SERVER_REQUIREMENTS, missing as missing_packages

    missing = missing_packages({**CLIENT_REQUIREMENTS, **SERVER_REQUIREMENTS})
    if missing:
        raise SelfTestFailure("packages", f"{', '.join(missing)} not installed in this Python: press Start in "
                                          "the MedVLSAM2 module once (it offers to install them), then run again")


def build_panel():
    """The module's real panel (``.ui`` loaded, parameter node bound), as Slicer builds it."""
    try:
        representation = slicer.modules.medvlsam2slicer.widgetRepresentation()
        panel = representation.self().panel
    except Exception as exc:
        raise SelfTestFailure("widget", f"the MedVLSAM2 panel could not be built ({type(exc).__name__}: {exc})") from None
    if panel is None or getattr(panel, "ui", None) is None:
        raise SelfTestFailure("widget", "the MedVLSAM2 panel has no widgets (setup did not run)")
    return panel


class PanelDriver:
    """Presses the real panel's buttons (in Slicer); pytest uses a driver with the same methods on the logic."""

    def __init__(self, panel) -> None:
        self.panel, self.logic = panel, panel.logic

    def pump(self) -> None:
        slicer.app.processEvents()  # the panel's timer delivers worker results; queued single-shots run

    def start(self, volume, segmentation) -> None:
        u = self.panel.ui
        u.inputVolumeSelector.setCurrentNode(volume)
        u.segmentationSelector.setCurrentNode(segmentation)
        u.serverModeSelector.currentIndex = max(0, u.serverModeSelector.findData("local"))
        self.panel._fillModels(MODEL)
        u.deviceSelector.currentText = "cpu"
        u.startServerButton.click()  # on ready, the panel opens the session on the selected volume

    def click(self, segment_id: str, ras, negative: bool) -> None:
        u = self.panel.ui
        u.segmentSelector.setCurrentSegmentID(segment_id)
        u.negativeButton.checked = negative
        u.pointButton.checked = True
        self.logic.prompt_node(slicer.mrmlScene, "point").AddControlPoint(vtk.vtkVector3d(*ras))
        self.pump()
        u.pointButton.checked = False

    def undo(self) -> None:
        self.panel.ui.undoButton.click()

    def text(self, prompt: str) -> None:
        self.panel.ui.textPromptEdit.plainText = prompt
        self.panel.ui.runTextButton.click()

    def ask(self, question: str) -> None:
        self.panel.ui.questionEdit.text = question
        self.panel.ui.askButton.click()


def wait(driver, done: Callable[[], bool], piece: str, timeout: float = TIMEOUT_S) -> None:
    """Pump events until ``done()``; a panel error or the timeout fails the step named ``piece``."""
    import time

    state = driver.logic.controller.state
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        driver.pump()
        if state.error:
            raise SelfTestFailure(piece, f"{state.error} {driver.logic.connection.last_log_lines(10)}".strip())
        if done():
            return
        time.sleep(0.05)
    raise SelfTestFailure(piece, f"no result in {timeout:.0f} s ({state.status_text()}) "
                                 f"{driver.logic.connection.last_log_lines(10)}".strip())


def _same(piece: str, got, want) -> None:
    import numpy as np

    if got.shape != want.shape or not np.array_equal(got, want):
        raise SelfTestFailure(piece, f"the segment differs from the reference session ({int(np.sum(got != want))} voxels)")


def run(driver, report: Callable[[str], None] = print) -> dict:
    """Every step through ``driver``; returns what was compared. Raises ``SelfTestFailure`` on the first miss."""
    require_packages()
    import numpy as np
    import torch

    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.factory import load_model
    from medvlsam2.session import Session

    from .connection import demo_weights
    from .geometry import volume_from_node
    from .segments import segment_array

    logic, scene = driver.logic, slicer.mrmlScene
    c = logic.controller
    case = generate_case(0, shape=SHAPE, spacing=SPACING)
    ijk_to_ras = case.volume.ijk_to_ras()
    volume = slicer.util.addVolumeFromArray(case.volume.array, ijk_to_ras, "MedVLSAM2 self-test CT")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedVLSAM2 self-test")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    clicked = segmentation.GetSegmentation().AddEmptySegment("clicked")
    if demo_weights() is None:
        raise SelfTestFailure("weights", "the demo bundle (Resources/DemoWeights) is not installed; reinstall the extension")
    torch.manual_seed(0)
    reference = Session(load_model(str(demo_weights())), volume_from_node(volume))
    obj = reference.add_object("clicked")

    report("Start: local server, demo model")
    driver.start(volume, segmentation)
    wait(driver, lambda: c.session is not None and not c.state.busy, "server")

    report("Point prompts through Markups")
    written: list = []
    c.segments_written.connect(written.append)
    masks = []
    for (ijk, label) in CLICKS:
        ras = (ijk_to_ras @ [*ijk, 1])[:3]
        driver.click(clicked, ras, negative=label < 0)
        wait(driver, lambda n=len(masks): len(written) > n and not c.state.busy, "point")
        reference.add_points(obj, [list(ijk)], [label])
        masks.append(reference.mask(obj).copy())
        _same("point", segment_array(segmentation, clicked, volume), masks[-1])

    report("Undo through the segmentation's history")
    driver.undo()
    # Slicer restores the segment; the panel then undoes the session's step on the worker
    # (a remote session keeps no mask: session.mask is the server's copy)
    wait(driver, lambda: c.worker.idle and not c.state.busy
         and np.array_equal(c.session.mask(c.objects[clicked]), masks[0]), "undo", timeout=60)
    _same("undo", segment_array(segmentation, clicked, volume), masks[0])
    reference.undo(obj)

    report("Text prompt")
    count, before = segmentation.GetSegmentation().GetNumberOfSegments(), len(written)
    driver.text(TEXT)
    wait(driver, lambda: len(written) > before and not c.state.busy, "text")
    found = reference.segment_text(TEXT)
    found = list(getattr(found, "found", found))
    ids = [segmentation.GetSegmentation().GetNthSegmentID(n)
           for n in range(count, segmentation.GetSegmentation().GetNumberOfSegments())]
    if len(ids) != len(found):
        raise SelfTestFailure("text", f"{len(ids)} segments for {TEXT!r}, the reference session found {len(found)}")
    for segment_id, result in zip(ids, found):
        _same("text", segment_array(segmentation, segment_id, volume), reference.mask(result.object_id))

    report("Question")
    answers: list = []
    c.answer_done.connect(lambda job, text: answers.append(text))
    driver.ask(QUESTION)
    wait(driver, lambda: bool(answers) and not c.state.busy, "question")
    expected = "".join(reference.ask(QUESTION))
    if answers[-1] != expected:
        raise SelfTestFailure("question", f"the answer differs from the reference session ({answers[-1]!r})")
    report("Self-test passed")
    return {"clicks": len(masks), "text_segments": len(ids), "answer_chars": len(expected),
            "text_voxels": int(sum(np.sum(reference.mask(r.object_id)) for r in found)),
            "voxels": int(np.sum(masks[0]))}


def module_self_test(test) -> None:
    """Body of ``MedVLSAM2SlicerTest``: the real panel in this Slicer."""
    require_packages()
    panel = build_panel()
    try:
        run(PanelDriver(panel), report=test.delayDisplay)
    finally:
        panel.logic.stop()
