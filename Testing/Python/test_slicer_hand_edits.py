"""A segment painted or erased by hand (as the Segment Editor does) becomes mask prompts on the edited slices,
so the next propagation keeps the edit; undoing the edit in Slicer takes the prompts back (slicer-core, the
real tiny session)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

from MedVLSAM2SlicerLib import geometry, segments, undo  # noqa: E402
from MedVLSAM2SlicerLib.controller import Controller  # noqa: E402
from MedVLSAM2SlicerLib.worker import ModelWorker  # noqa: E402
from slicer_scene import phantom_with_segment, scene_with_logics  # noqa: E402

EDITED = 2  # the hand-painted slice
# SAM2 keeps a mask prompt's slice as its output after resampling it to its 256-px mask grid, which rounds
# the corners of a painted square (4 of 144 voxels here): the slice is kept to within that
KEPT_DICE = 0.95


def dice(a, b) -> float:
    return 2 * float(np.sum((a > 0) & (b > 0))) / max(1, int(np.sum(a > 0) + np.sum(b > 0)))


def tiny_session(volume):
    from medvlsam2.factory import load_model
    from medvlsam2.session import Session

    torch.manual_seed(0)
    return Session(load_model("tiny"), volume)


def test_a_hand_painted_slice_becomes_a_mask_prompt_and_survives_the_next_propagation(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    scene = scene_with_logics()
    ct, node, sid = phantom_with_segment(scene)
    volume = geometry.volume_from_node(ct)
    session, worker = tiny_session(volume), ModelWorker()
    try:
        c = Controller(worker)
        editor = undo.new_editor_logic(scene, node)
        c.attach(session, ct, node, undo.SegmentationUndo(node, editor))
        pending = []
        c.defer = pending.append  # Slicer: a Qt single-shot after the burst of segmentation events
        messages = []
        c.message.connect(messages.append)
        c.add_points(sid, [[32, 32, 4]], [1])
        worker.wait_all()
        c.propagate(sid)
        worker.wait_all()
        obj = c.objects[sid]
        propagated = segments.segment_array(node, sid, ct)

        painted = propagated.copy()  # the user erases slice 2 and paints a square the model would not draw
        painted[EDITED] = 0
        painted[EDITED, 40:52, 8:20] = 1
        editor.SaveStateForUndo()  # what a Segment Editor effect does before it paints
        slicer.util.updateSegmentBinaryLabelmapFromArray(painted, node, sid, ct)
        assert len(pending) == 1
        pending.pop()()
        worker.wait_all()
        assert c.state.error == "" and "1 slice prompt" in messages[-1]
        assert dice(session.mask(obj)[EDITED], painted[EDITED]) >= KEPT_DICE  # the session took the edit
        assert np.array_equal(segments.segment_array(node, sid, ct), painted)  # and the user's paint is untouched

        c.propagate(sid)
        worker.wait_all()
        kept = segments.segment_array(node, sid, ct)
        assert dice(kept[EDITED], painted[EDITED]) >= KEPT_DICE  # the propagation kept the hand-painted slice
        assert c.state.error == ""

        # without the prompt the propagation does not keep it: the same clicks and propagations on a fresh session
        control = tiny_session(volume)
        o = control.add_object("organ")
        control.add_points(o, [[32, 32, 4]], [1])
        control.propagate(o)
        control.propagate(o)
        assert dice(control.mask(o)[EDITED], painted[EDITED]) < 0.5

        # Slicer's undo walks back through the propagation (when it changed a voxel) and the edit; the session
        # follows each step, so after the edit is undone its mask is the propagated one again
        for state in ([painted] if not np.array_equal(kept, painted) else []) + [propagated]:
            editor.Undo()
            pending and pending.pop()()
            worker.wait_all()
            assert np.array_equal(segments.segment_array(node, sid, ct), state)
        assert np.array_equal(session.mask(obj), propagated) and c.state.error == ""
    finally:
        worker.stop()
        session.close()
