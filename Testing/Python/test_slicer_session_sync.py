"""The panel against a session that keeps its masks remote: a sync without edits asks it for nothing, a hand
edit is sent without downloading the session's mask, and after the server forgot the session
(``SessionExpired``) the panel re-creates its objects on the new one from the segments it wrote, leaving the
segmentation as it was (slicer-core, the real tiny session behind RemoteSession's expiry behaviour)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

from medvlsam2.protocol import SessionExpired  # noqa: E402
from MedVLSAM2SlicerLib import geometry, segments, undo  # noqa: E402
from MedVLSAM2SlicerLib.controller import Controller  # noqa: E402
from MedVLSAM2SlicerLib.worker import ModelWorker  # noqa: E402
from slicer_scene import phantom_with_segment, scene_with_logics  # noqa: E402

KEPT_DICE = 0.95  # a mask prompt comes back through SAM2's 256-px mask grid (see test_slicer_hand_edits)


def dice(a, b) -> float:
    return 2 * float(np.sum((a > 0) & (b > 0))) / max(1, int(np.sum(a > 0) + np.sum(b > 0)))


def tiny_session(volume):
    from medvlsam2.factory import load_model
    from medvlsam2.session import Session

    torch.manual_seed(0)
    return Session(load_model("tiny"), volume)


class ExpiringSession:
    """A local Session with RemoteSession's expiry behaviour: after ``expire()`` the next call opens a new,
    empty session and raises ``SessionExpired``. Counts ``mask`` calls (each is a full-volume download remotely)."""

    def __init__(self, volume) -> None:
        self.volume, self.inner, self.reopened, self.mask_calls, self._expire = volume, tiny_session(volume), 0, 0, False

    def expire(self) -> None:
        self._expire = True

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self._expire and name != "close":
                self._expire = False
                self.inner.close()
                self.inner, self.reopened = tiny_session(self.volume), self.reopened + 1
                raise SessionExpired("the server had closed this session; a new session is open", "unknown_session")
            self.mask_calls += name == "mask"
            return getattr(self.inner, name)(*args, **kwargs)
        return call


@pytest.fixture()
def panel(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    scene = scene_with_logics()
    ct, node, sid = phantom_with_segment(scene)
    session, worker = ExpiringSession(geometry.volume_from_node(ct)), ModelWorker()
    c = Controller(worker)
    editor = undo.new_editor_logic(scene, node)
    c.attach(session, ct, node, undo.SegmentationUndo(node, editor))
    pending, messages = [], []
    c.defer = pending.append  # Slicer: a Qt single-shot after the burst of segmentation events
    c.message.connect(messages.append)

    def settle() -> None:
        while pending:
            pending.pop()()
        worker.wait_all()
    c.add_points(sid, [[32, 32, 4]], [1])
    worker.wait_all()
    c.propagate(sid)
    worker.wait_all()
    assert c.state.error == "" and segments.segment_array(node, sid, ct).any()
    try:
        yield c, session, node, ct, sid, editor, settle, messages
    finally:
        worker.stop()
        session.close()


def test_a_sync_asks_the_session_for_no_mask_and_a_hand_edit_is_sent_from_the_fingerprints(panel):
    c, session, node, ct, sid, editor, settle, messages = panel
    propagated = segments.segment_array(node, sid, ct)
    node.GetSegmentation().GetSegment(sid).Modified()  # an event without an edit (e.g. a display change)
    settle()
    c.sync()
    assert session.mask_calls == 0 and c.state.error == ""

    painted = propagated.copy()  # the user erases slice 2 and replaces slice 6 by a square
    painted[2] = painted[6] = 0
    painted[6, 40:52, 8:20] = 1
    editor.SaveStateForUndo()
    slicer.util.updateSegmentBinaryLabelmapFromArray(painted, node, sid, ct)
    settle()
    assert session.mask_calls == 0 and "2 slice prompt" in messages[-1]  # exactly the two edited slices
    mask = session.inner.mask(c.objects[sid])
    assert dice(mask[6], painted[6]) >= KEPT_DICE and not mask[2].any()

    editor.Undo()  # Slicer's undo of the edit: the session undoes its two prompts, still without a download
    settle()
    assert session.mask_calls == 0 and c.state.error == ""
    assert np.array_equal(session.inner.mask(c.objects[sid]), propagated)


def test_an_expired_session_gets_the_segments_back_and_the_segmentation_does_not_change(panel):
    c, session, node, ct, sid, editor, settle, messages = panel
    before = np.zeros_like(segments.segment_array(node, sid, ct))  # a hand-drawn block, large enough that SAM2's
    before[2:6, 20:44, 16:48] = 1  # mask-grid rounding stays within KEPT_DICE (the random model draws specks)
    editor.SaveStateForUndo()
    slicer.util.updateSegmentBinaryLabelmapFromArray(before, node, sid, ct)
    settle()
    old_obj = c.objects[sid]
    session.expire()
    c.propagate(sid)  # the server forgot the session: this call fails, the panel re-creates its object
    settle()
    assert session.reopened == 1 and messages[-1].startswith("Session expired, re-opened, your segments are kept")
    assert c.state.error == "" and not c.state.busy
    assert np.array_equal(segments.segment_array(node, sid, ct), before)  # nothing in the segmentation changed
    obj = c.objects[sid]
    assert list(session.inner.objects()) == [obj]  # a new object on the new session (the old id means nothing there)
    mask = session.inner.mask(obj)
    assert dice(mask, before) >= KEPT_DICE
    assert all(mask[k].any() == before[k].any() for k in range(len(before)))  # the slices it covers, no others
    del old_obj

    c.add_points(sid, [[32, 32, 4]], [1])  # prompting goes on from what the user sees
    settle()
    assert c.state.error == "" and dice(segments.segment_array(node, sid, ct), before) >= 0.5


def test_an_edit_made_while_the_objects_are_re_created_reaches_the_new_session(panel):
    c, session, node, ct, sid, editor, settle, messages = panel
    session.expire()
    c.propagate(sid)
    while c.state.busy_job != "re-open":  # the expired call came back; the objects are being re-created
        c.worker.deliver(timeout=0.05)
    assert not c.objects  # not re-created yet (its SAM2 calls take far longer than the rest of deliver)
    painted = segments.segment_array(node, sid, ct)
    painted[6] = 0
    painted[6, 40:52, 8:20] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(painted, node, sid, ct)
    settle()
    assert c.state.error == "" and np.array_equal(segments.segment_array(node, sid, ct), painted)
    assert "1 slice prompt" in messages[-1] and session.mask_calls == 0
    assert dice(session.inner.mask(c.objects[sid])[6], painted[6]) >= KEPT_DICE


@pytest.mark.skipif(__import__("os").environ.get("MEDVLSAM2_SERVER_TESTS") != "1",
                    reason="starts a real tiny server (~45 s on 2 busy cores); set MEDVLSAM2_SERVER_TESTS=1")
def test_the_same_with_a_real_server_whose_lease_runs_out(monkeypatch):
    import time

    from medvlsam2.client import Client
    from medvlsam2.server.launcher import launch_server

    monkeypatch.setenv("TQDM_DISABLE", "1")
    scene = scene_with_logics()
    ct, node, sid = phantom_with_segment(scene)
    server = launch_server(model="tiny", device="cpu", extra_args=["--seed", "0", "--lease-s", "3", "--liveness-s", "2"])
    client, worker = Client(server.url, server.token, heartbeat=False), ModelWorker()
    session = client.open_session(geometry.volume_from_node(ct))
    downloads = []
    monkeypatch.setattr(session, "mask", lambda obj, _real=session.mask: downloads.append(obj) or _real(obj))
    try:
        c = Controller(worker)
        c.attach(session, ct, node, undo.SegmentationUndo(node, undo.new_editor_logic(scene, node)))
        messages, pending = [], []
        c.message.connect(messages.append)
        c.defer = pending.append
        c.add_points(sid, [[32, 32, 4]], [1])
        worker.wait_all(timeout=120)
        painted = np.zeros_like(segments.segment_array(node, sid, ct))
        painted[2:6, 20:44, 16:48] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(painted, node, sid, ct)  # a hand edit
        pending.pop()()
        worker.wait_all(timeout=120)
        assert c.state.error == "" and "slice prompt" in messages[-1] and downloads == []
        time.sleep(8)  # past the server's lease and liveness: it forgets the session
        c.propagate(sid)
        worker.wait_all(timeout=120)
        assert session.reopened == 1 and messages[-1].startswith("Session expired, re-opened, your segments are kept")
        assert c.state.error == "" and np.array_equal(segments.segment_array(node, sid, ct), painted)
        assert downloads == []
        assert dice(session.mask(c.objects[sid]), painted) >= KEPT_DICE  # the new server session has the segment
        c.propagate(sid)
        worker.wait_all(timeout=120)
        after = segments.segment_array(node, sid, ct)  # the re-created prompts hold their slices through it
        assert c.state.error == "" and dice(after[2:6], painted[2:6]) >= KEPT_DICE
    finally:
        worker.stop()
        session.close()
        client.close()
        server.stop()


def test_the_edited_slices_are_read_in_place_as_the_whole_segment_has_them():
    scene = scene_with_logics()
    ct, node, sid = phantom_with_segment(scene)
    other = node.GetSegmentation().AddEmptySegment("other")
    rng = np.random.default_rng(0)
    for segment_id, i0 in ((sid, 5), (other, 32)):  # side by side, so they can share a layer
        mask = np.zeros((8, 64, 64), np.uint8)
        mask[1:7, 10:50, i0:i0 + 26] = rng.random((6, 40, 26)) > 0.5
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segment_id, ct)
    node.GetSegmentation().CollapseBinaryLabelmaps(False)  # one shared layer: the segments differ by label value
    assert node.GetSegmentation().GetNumberOfLayers() == 1
    empty = node.GetSegmentation().AddEmptySegment("empty")
    for segment_id in (sid, other, empty):
        whole = segments.segment_array(node, segment_id, ct)
        got = segments.segment_slices(node, segment_id, ct, list(range(8)))
        assert all(np.array_equal(got[k], whole[k]) for k in range(8)), segment_id
    assert segments.segment_array(node, other, ct).any() and not segments.segment_slices(node, empty, ct, [3])[3].any()
