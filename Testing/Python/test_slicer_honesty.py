"""The panel carries the engine's doubts (docs/honesty.md) on real MRML (slicer-core): the status line names withheld
and not-found targets and the results' warnings, "Deliver anyway (unverified)" reaches ``segment_text(force=)``,
and the panel's report is the engine's one report writer's draft, headed by the model and every warning."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed; pip install slicer-core to run the MRML tests")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer"))

from MedVLSAM2SlicerLib import geometry, outcome, report_node, segments  # noqa: E402
from MedVLSAM2SlicerLib.controller import Controller  # noqa: E402
from MedVLSAM2SlicerLib.worker import ModelWorker  # noqa: E402
from medvlsam2.domain import domain_warning  # noqa: E402
from medvlsam2.plausibility.vet import UNVERIFIED, withheld  # noqa: E402
from medvlsam2.results import NotFound, SegmentationResult  # noqa: E402
from test_slicer_mrml import FakeSession, controller, ct, scene, segmentation  # noqa: E402,F401  (fixtures)

CYST = "right kidney cyst"
WHY = f"'{CYST}': 93 % of the volume (19137 mL), expected < 7.3 % (at most 1500 mL for a cyst)"
CLICK = "positive click (3, 4, 2) is not in the result"


class DoubtingSession(FakeSession):
    """The fake session answering as the engine's checks do: "right kidney cyst" is withheld with the vetting
    reason (delivered as "X (unverified)" with ``force``), "absent" is the model's not-found, clicks are flagged."""

    def __init__(self) -> None:
        super().__init__()
        self.forces: list[bool] = []

    def segment_text(self, prompt, cancel=None, progress=None, force=False):
        self.forces.append(force)
        out = super().segment_text(prompt.replace(CYST, "cyst"), cancel, progress, force)
        for r in list(out.found):
            if r.name != "cyst":
                continue
            if not force:
                out.found.remove(r)
                self.remove(r.object_id)
                out.not_found.append(NotFound(CYST, WHY))
            else:
                r.name = self.names[r.object_id] = f"{CYST} {UNVERIFIED}"
                r.warnings.append(WHY)
        return out

    def add_points(self, obj, points_ijk, labels):
        result = super().add_points(obj, points_ijk, labels)
        result.warnings.append(CLICK)
        return result


@pytest.fixture
def doubting(controller):
    """test_slicer_mrml's controller on a ``DoubtingSession``, serving a phantom-trained model; its messages kept."""
    controller.attach(DoubtingSession(), controller.volume_node, controller.segmentation_node)
    controller.model_info = SimpleNamespace(description="MedVL-SAM2 demo bundle", provenance="phantom-trained")
    controller.messages = []
    controller.message.connect(controller.messages.append)
    return controller


def names(segmentation) -> list[str]:
    seg = segmentation.GetSegmentation()
    return [seg.GetNthSegment(n).GetName() for n in range(seg.GetNumberOfSegments())]


def test_status_line_words_each_kind_of_doubt_once():
    found = [SegmentationResult(1, "liver", (0, 1, 0, 1, 0, 1), np.ones((1, 1, 1), np.uint8), warnings=["a", "b"]),
             SegmentationResult(2, "spleen", (0, 1, 0, 1, 0, 1), np.ones((1, 1, 1), np.uint8), warnings=["b"])]
    held, absent = NotFound(CYST, WHY), NotFound("gallbladder", "the model answered: there is no gallbladder")
    assert withheld(held) and not withheld(absent)
    assert outcome.status_line(found, [absent, held]) == (
        f"Not delivered: {WHY} | Not found: gallbladder (the model answered: there is no gallbladder) | ⚠ a; b")
    assert outcome.status_line([], [absent]) == "Not found: gallbladder (the model answered: there is no gallbladder)"
    assert outcome.status_line(found[:0]) == ""
    assert outcome.not_delivered([absent, held]) == [f"not delivered: {WHY}"]


def test_a_withheld_target_is_not_delivered_and_the_status_line_says_why(doubting, segmentation):
    doubting.segment_text(f"liver and {CYST} and absent")
    doubting.worker.wait_all()
    assert doubting.session.forces == [False]  # the checkbox is off by default
    assert names(segmentation) == [f"liver and {CYST} and absent"]  # only the liver
    assert doubting.messages[-1] == (f"Not delivered: {WHY} | "
                                       "Not found: absent (the model answered that there is no absent)")
    assert doubting.doubts == [f"not delivered: {WHY}"]


def test_deliver_anyway_passes_force_and_keeps_the_unverified_name_and_its_reason(doubting, segmentation):
    doubting.segment_text(f"{CYST}\nliver", force=True)
    doubting.worker.wait_all()
    assert doubting.session.forces == [True, True]  # every queued line
    assert names(segmentation) == [f"{CYST} {UNVERIFIED}", "liver"]
    cyst = segments.segment_array(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), doubting.volume_node)
    assert cyst.sum() == 9
    assert f"⚠ {WHY}" in doubting.messages
    assert doubting.doubts == [WHY]


def test_click_warnings_reach_the_status_line(doubting, segmentation):
    sid = segmentation.GetSegmentation().AddEmptySegment("organ")
    doubting.add_points(sid, [[3, 4, 2]], [1])
    doubting.worker.wait_all()
    assert doubting.messages[-1] == f"⚠ {CLICK}"
    assert segments.segment_array(segmentation, sid, doubting.volume_node).sum() == 1  # still delivered


def test_the_report_is_the_engine_draft_with_model_warnings_and_marked_rows(doubting, scene, segmentation, tmp_path):
    doubting.segment_text(f"liver and {CYST}")
    doubting.worker.wait_all()
    done = []
    doubting.answer_done.connect(lambda job, text: done.append(text))
    doubting.report()
    doubting.worker.wait_all()
    text = report_node.report_text_node(scene, create=False).GetText()
    assert done == [text] and doubting.state.report_text == text
    lines = text.splitlines()
    assert lines[0] == "# Draft findings report" and "not for diagnosis" in lines[2]
    assert lines[4] == ("Made by: MedVL-SAM2 demo bundle (phantom-trained; trained on synthetic phantoms only: "
                        "not for clinical images).")
    warnings = text.split("## Warnings", 1)[1].split("## Findings (generated)", 1)[0]
    notice = domain_warning(doubting.model_info, geometry.volume_from_node(doubting.volume_node))
    assert notice and notice in warnings  # this tiny random CT is unlike the phantoms
    assert f"not delivered: {WHY}" in warnings
    assert "Liver: normal. Spleen: normal." in text.split("## Findings (generated)", 1)[1]
    row = names(segmentation)[0]  # the liver, named by its prompt
    assert f"| ⚠ {row} | 0.0 |" in text  # measured from the segment, and marked: 22 % of it is air here
    assert f"implausible, do not use: '{row}': " in text and "outside the body" in text
    saved = report_node.save_markdown(text, tmp_path / "draft").read_text(encoding="utf-8")
    assert saved == text.strip() + "\n" and saved.count("# Draft findings report") == 1  # no second header


def test_a_new_session_forgets_the_previous_volumes_doubts(doubting, ct, segmentation):
    doubting.segment_text(CYST)
    doubting.worker.wait_all()
    assert doubting.doubts
    doubting.attach(DoubtingSession(), ct, segmentation)
    assert doubting.doubts == []


def test_the_logic_tells_the_report_which_model_serves(segmentation, ct):
    from MedVLSAM2SlicerLib.connection import ServerInfo
    from MedVLSAM2SlicerLib.logic import MedVLSAM2Logic

    logic = MedVLSAM2Logic()
    try:
        served = ServerInfo("cpu", None, None, "phantom-trained", "DemoWeights", "MedVL-SAM2 demo bundle")
        logic.connection.connect_remote = lambda url, token: None
        logic.connection.device_info = lambda: served
        logic.start("demo", "cpu", "http://gpu-host:8000", "", "")
        logic.controller.worker.wait_all()
        info = logic.controller.model_info
        assert (info.description, info.provenance) == ("MedVL-SAM2 demo bundle", "phantom-trained")
        local = FakeSession()
        local.model = SimpleNamespace(description="MedVL-SAM2 tiny", provenance="random")  # a local Session's model
        logic.use_session(local, ct, segmentation)
        assert logic.controller.model_info is local.model
        logic.stop()
        assert logic.controller.model_info is None
    finally:
        logic.shutdown()


def test_a_real_tiny_session_vets_what_the_panel_asks_for(scene, monkeypatch):
    """The engine's own checks (not a stand-in) behind the panel: a random-weight model's "liver" is not delivered
    unchecked; "Deliver anyway" draws it with its mark and its doubts in the status line and the report."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    from medvlsam2.config import tiny
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.session import Session
    from test_slicer_mrml import _ball_ct

    _, ct = _ball_ct(64)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    torch.manual_seed(0)
    model = MedVLSAM2.from_config(tiny()).eval()
    model.description, model.provenance = "MedVL-SAM2 tiny", "random"
    worker = ModelWorker()
    try:
        c = Controller(worker)
        c.attach(Session(model, geometry.volume_from_node(ct)), ct, segmentation)
        c.model_info = model
        c.state.update(connection="connected", session_open=True)
        messages = []
        c.message.connect(messages.append)
        c.segment_text("liver")
        worker.wait_all(timeout=300)
        assert messages == ["Not found: liver (the model answered that there is no liver)"]
        assert names(segmentation) == [] and c.state.error == ""
        c.segment_text("liver", force=True)
        worker.wait_all(timeout=300)
        assert names(segmentation) == ["liver (forced)"] and c.state.error == ""  # the engine's mark is kept
        assert messages[-1].startswith("⚠ 'liver (forced)': ") and "outside the body" in messages[-1]
        c.report()
        worker.wait_all(timeout=300)
        text = c.state.report_text
        assert text.splitlines()[4] == "Made by: MedVL-SAM2 tiny (random; random weights: its masks and text are meaningless)."
        warnings = text.split("## Warnings", 1)[1].split("## Findings (generated)", 1)[0]
        assert messages[-1][2:] in warnings  # the forced result's doubt heads the report
        assert "| ⚠ liver (forced) |" in text  # and its measurement row is marked
    finally:
        worker.stop()


def test_the_report_is_drafted_off_the_main_thread(doubting, monkeypatch):
    """Measuring and checking the segments takes seconds on a large CT: Slicer's main thread must not wait for it."""
    import threading

    from medvlsam2.report import writer

    threads = []
    real = writer.draft_report

    def spy(*args, **kwargs):
        threads.append(threading.get_ident())
        return real(*args, **kwargs)
    monkeypatch.setattr(writer, "draft_report", spy)
    doubting.segment_text("liver")
    doubting.worker.wait_all()
    doubting.report()
    doubting.worker.wait_all()
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    assert doubting.state.report_text.startswith("# Draft findings report") and not doubting.state.busy
