"""Slicer module adapters on real MRML (slicer-core, no Slicer application): geometry, markups,
segment writes, text-prompt segments, report node, cancel, and the worker with a real tiny Session."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

try:
    import slicer
    import vtk
except ImportError as exc:  # pragma: no cover - depends on the test environment
    pytest.skip(f"slicer-core is not installed ({exc}); pip install slicer-core to run the MRML tests",
                allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer"))

from MedVLSAM2SlicerLib import geometry, markups, report_node, segments, terminology, undo  # noqa: E402
from MedVLSAM2SlicerLib.controller import Controller  # noqa: E402
from MedVLSAM2SlicerLib.worker import ModelWorker  # noqa: E402
from medvlsam2.errors import Cancelled, InputError  # noqa: E402
from medvlsam2.io import terminology as table  # noqa: E402
from medvlsam2.results import NotFound, SegmentationResult, TextResult, changed_region  # noqa: E402
from slicer_scene import scene_with_logics  # noqa: E402

SHAPE = (8, 24, 32)  # k, j, i


@pytest.fixture
def scene():
    """A scene with the module logics slicer.util needs (see FIELD_NOTES section 5)."""
    scene = scene_with_logics()
    yield scene
    scene.Clear(1)


def oblique_ijk_to_ras() -> np.ndarray:
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    m = np.eye(4)
    m[:3, :3] = rot @ tilt @ np.diag([0.7, 0.8, 2.5])
    m[:3, 3] = [-40.0, 15.0, 120.0]
    return m


def linear_transform(scene, matrix: np.ndarray):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(geometry._numpy_to_vtk(matrix))
    return node


def shift_rotate() -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 degrees about S
    m[:3, 3] = [5.0, -7.0, 11.0]
    return m


@pytest.fixture
def ct(scene):
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, SHAPE).astype(np.int16)
    node = slicer.util.addVolumeFromArray(array, oblique_ijk_to_ras(), "ct")
    return node


@pytest.fixture
def segmentation(scene, ct):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    return node


def test_oblique_transformed_volume_to_session_voxels_and_back(scene, ct):
    ct.SetAndObserveTransformNodeID(linear_transform(scene, shift_rotate()).GetID())
    volume = geometry.volume_from_node(ct)
    assert volume.shape == SHAPE and np.array_equal(volume.array, slicer.util.arrayFromVolume(ct))
    world = shift_rotate() @ oblique_ijk_to_ras()
    np.testing.assert_allclose(volume.ijk_to_ras(), world, atol=1e-9)
    # the same voxel lands on the same LPS point in SimpleITK (what the engine reads and writes)
    image = volume.to_sitk()
    ras = world @ [3, 5, 2, 1]
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((3, 5, 2)), [-ras[0], -ras[1], ras[2]], atol=1e-6)
    # and back: a node built from the Volume maps every voxel to the same world point
    back = slicer.util.addVolumeFromArray(volume.array, volume.ijk_to_ras(), "back")
    np.testing.assert_allclose(geometry.ijk_to_world(back), world, atol=1e-9)
    ijk = np.array([[0, 0, 0], [31, 23, 7], [10, 4, 3]])
    np.testing.assert_array_equal(geometry.voxel_indices(back, (world @ np.c_[ijk, np.ones(3)].T).T[:, :3]), ijk)


def test_nonlinear_parent_transform_is_refused_with_advice(scene, ct):
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    ct.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="Harden transform"):
        geometry.volume_from_node(ct)


def test_markups_points_in_a_transformed_node_give_the_right_voxels(scene, ct):
    world = geometry.ijk_to_world(ct)
    expected = np.array([[4, 6, 1], [20, 11, 5], [31, 0, 7]])
    world_pts = (world @ np.c_[expected, np.ones(3)].T).T[:, :3] + 0.2  # a bit off-centre: rounds to the voxel
    transform = linear_transform(scene, shift_rotate())
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    node.SetAndObserveTransformNodeID(transform.GetID())
    local = (np.linalg.inv(shift_rotate()) @ np.c_[world_pts, np.ones(3)].T).T[:, :3]
    for p in local:
        node.AddControlPoint(vtk.vtkVector3d(*p))
    np.testing.assert_array_equal(markups.points_to_voxels(node, ct), expected)
    negative = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    negative.AddControlPoint(vtk.vtkVector3d(*world_pts[0]))
    points, labels = markups.labelled_points(node, negative, ct)
    assert points.tolist() == expected.tolist() + [expected[0].tolist()] and labels.tolist() == [1, 1, 1, -1]
    outside = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    outside.AddControlPoint(vtk.vtkVector3d(*(world @ [-5, 0, 0, 1])[:3]))
    with pytest.raises(InputError, match="outside the volume"):
        markups.points_to_voxels(outside, ct)


def test_roi_in_a_transformed_node_gives_the_voxel_box(scene):
    # axis-aligned volume so the expected box is exact: spacing (1, 1, 2), origin (0, 0, 0)
    ijk_to_ras = np.diag([1.0, 1.0, 2.0, 1.0])
    ct = slicer.util.addVolumeFromArray(np.zeros(SHAPE, np.int16), ijk_to_ras, "axial")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    transform = linear_transform(scene, shift_rotate())
    roi.SetAndObserveTransformNodeID(transform.GetID())
    # wanted world box: i 4..10, j 3..12, k 2..5 (voxel centres), i.e. RAS x 3.5..10.5, y 2.5..12.5, z 3..11
    centre_world = np.array([7.0, 7.5, 7.0, 1.0])
    roi.SetCenter(*(np.linalg.inv(shift_rotate()) @ centre_world)[:3])
    roi.SetSize(10.0, 7.0, 8.0)  # local x maps to world y under the 90 degree rotation
    assert markups.roi_to_box(roi, ct) == (4, 3, 2, 10, 12, 5)
    roi.SetCenter(*(np.linalg.inv(shift_rotate()) @ [500.0, 0, 0, 1])[:3])
    with pytest.raises(InputError, match="does not overlap"):
        markups.roi_to_box(roi, ct)


def axial_ct(shape=SHAPE):
    """An axis-aligned volume, spacing (1, 1, 2), origin 0: voxel (i, j, k) is at RAS (i, j, 2k)."""
    return slicer.util.addVolumeFromArray(np.zeros(shape, np.int16), np.diag([1.0, 1.0, 2.0, 1.0]), "axial")


def test_an_roi_placed_by_two_corner_clicks_gives_one_box_and_each_adjustment_one_more(scene):
    ct = axial_ct()
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    boxes, errors = [], []
    tracker = markups.RoiBoxTracker(roi, ct, boxes.append, errors.append)
    # what the ROI widget does on two clicks: the first corner (PointPositionDefinedEvent with a zero size) ...
    roi.AddControlPoint(vtk.vtkVector3d(3.5, 2.5, 3.0))
    assert roi.GetNumberOfControlPoints() == 1 and tuple(roi.GetSize()) == (0, 0, 0)
    assert boxes == [] and errors == []
    # ... then the second corner, which gives the ROI its size
    roi.AddControlPoint(vtk.vtkVector3d(10.5, 12.5, 11.0))
    assert boxes == [(4, 3, 2, 10, 12, 5)] and errors == []  # voxel centres inside: i 4..10, j 3..12, z 3..11 -> k 2..5
    roi.InvokeEvent(roi.PointEndInteractionEvent)  # a click on a handle that moved nothing: no second run
    assert len(boxes) == 1
    roi.SetSize(7.0, 10.0, 20.0)  # drag a handle: one more box when the interaction ends
    roi.InvokeEvent(roi.PointEndInteractionEvent)
    assert boxes[-1] == (4, 3, 0, 10, 12, 7) and len(boxes) == 2  # z -3..17, clipped to the volume
    tracker.stop()
    roi.SetSize(3.0, 3.0, 3.0)
    roi.InvokeEvent(roi.PointEndInteractionEvent)
    assert len(boxes) == 2  # stopped trackers stay silent


def test_an_roi_flat_on_a_sagittal_slice_is_refused_with_advice(scene):
    ct = axial_ct()
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    boxes, errors = [], []
    markups.RoiBoxTracker(roi, ct, boxes.append, errors.append)
    roi.SetCenter(5.0, 8.0, 6.0)
    roi.SetSize(0.0, 6.0, 6.0)
    roi.AddControlPoint(vtk.vtkVector3d(5.0, 8.0, 6.0))
    roi.SetSize(0.0, 6.0, 6.0)
    roi.InvokeEvent(roi.PointEndInteractionEvent)
    assert boxes == [] and errors and "axial" in errors[-1]


def closed_curve(scene, points_ras, closed=True):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsClosedCurveNode" if closed else "vtkMRMLMarkupsCurveNode")
    node.SetCurveTypeToLinear()  # straight edges, so the expected voxels are exact
    for p in points_ras:
        node.AddControlPoint(vtk.vtkVector3d(*p))
    return node


def test_a_lasso_on_an_axial_slice_becomes_the_mask_prompt_of_that_slice(scene, segmentation):
    ct = axial_ct()
    # a triangle on slice k = 3 (z = 6): corners (i, j) (2.5, 2.5), (20.5, 2.5), (2.5, 14.5)
    lasso = closed_curve(scene, [(2.5, 2.5, 6.0), (20.5, 2.5, 6.0), (2.5, 14.5, 6.0)])
    k, mask = markups.lasso_to_mask(lasso, ct)
    jj, ii = np.mgrid[:SHAPE[1], :SHAPE[2]]
    expected = (ii >= 3) & (jj >= 3) & ((ii - 2.5) / 18 + (jj - 2.5) / 12 < 1)  # inside the triangle
    assert k == 3 and mask.shape == (SHAPE[1], SHAPE[2]) and np.array_equal(mask.astype(bool), expected)
    tilted = closed_curve(scene, [(2.5, 2.5, 2.0), (20.5, 2.5, 6.0), (2.5, 14.5, 10.0)])
    with pytest.raises(InputError, match="axial"):
        markups.lasso_to_mask(tilted, ct)
    # the controller hands it to the session as one mask prompt on that slice
    worker = ModelWorker()
    try:
        c = Controller(worker)
        c.attach(FakeSession(), ct, segmentation)
        c.state.update(connection="connected", session_open=True)
        sid = segmentation.GetSegmentation().AddEmptySegment("organ")
        c.add_mask(sid, k, mask)
        worker.wait_all()
        (obj, got_k, got_mask), = c.session.masks
        assert got_k == 3 and np.array_equal(got_mask, mask) and c.state.error == ""
        assert np.array_equal(segments.segment_array(segmentation, sid, ct)[3], mask)
    finally:
        worker.stop()


def test_a_lasso_on_a_coronal_or_sagittal_view_becomes_one_click_per_stretch_on_each_axial_slice(scene):
    ct = axial_ct()
    # a rectangle on the coronal plane j = 5: i 2.5..8.5, k 1.5..4.5 (z 3..9) encloses i 3..8 on slices 2..4
    coronal = closed_curve(scene, [(2.5, 5.0, 3.0), (8.5, 5.0, 3.0), (8.5, 5.0, 9.0), (2.5, 5.0, 9.0)])
    assert markups.lasso_axis(coronal, ct) == markups.CORONAL
    assert markups.lasso_to_points(coronal, ct).tolist() == [[5, 5, 2], [5, 5, 3], [5, 5, 4]]
    with pytest.raises(InputError, match="clicks"):
        markups.lasso_to_mask(coronal, ct)
    # a U on the sagittal plane i = 4 (j 1.5..13.5, k 0.5..5.5, notch j 5.5..9.5 from k 2.5 up): one stretch
    # on slices 1-2, two (each its own click) on slices 3-5
    u = [(1.5, 0.5), (13.5, 0.5), (13.5, 5.5), (9.5, 5.5), (9.5, 2.5), (5.5, 2.5), (5.5, 5.5), (1.5, 5.5)]
    sagittal = closed_curve(scene, [(4.0, j, 2 * k) for j, k in u])
    assert markups.lasso_axis(sagittal, ct) == markups.SAGITTAL
    expected = [[4, 7, 1], [4, 7, 2]] + [[4, j, k] for k in (3, 4, 5) for j in (3, 11)]
    assert markups.lasso_to_points(sagittal, ct).tolist() == expected
    assert len(markups.lasso_to_points(sagittal, ct, max_points=3)) == 3


def test_a_scribble_in_a_coronal_view_becomes_points_on_the_voxels_it_crosses(scene):
    ct = axial_ct()
    # a stroke on the coronal plane j = 5 (y = 5) from voxel (2, 5, 1) to (12, 5, 6), bent at (12, 5, 1)
    stroke = closed_curve(scene, [(2.0, 5.0, 2.0), (12.0, 5.0, 2.0), (12.0, 5.0, 12.0)], closed=False)
    points = markups.scribble_to_points(stroke, ct)
    expected = [(i, 5, 1) for i in range(2, 13)] + [(12, 5, k) for k in range(2, 7)]
    assert points.tolist() == [list(p) for p in expected]  # in drawing order, each voxel once, no gap
    assert len(markups.scribble_to_points(stroke, ct, max_points=4)) == 4
    outside = closed_curve(scene, [(-50.0, 5.0, 2.0), (-40.0, 5.0, 2.0)], closed=False)
    with pytest.raises(InputError, match="outside"):
        markups.scribble_to_points(outside, ct)


def test_a_freehand_stroke_painted_on_a_coronal_view_is_sent_once_as_a_scribble(scene):
    from MedVLSAM2SlicerLib.freehand import FreehandStroke

    ct = axial_ct()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    view = scene.AddNewNodeByClass("vtkMRMLSliceNode")  # a coronal view at A = 5 (j = 5), 1 mm per pixel
    view.SetOrientation("Coronal")
    view.SetDimensions(64, 64, 1)
    view.SetFieldOfView(64, 64, 1)
    view.SetSliceOffset(5)
    view.UpdateMatrices()
    xy_to_ras = geometry._vtk_to_numpy(view.GetXYToRAS())
    interactor = vtk.vtkGenericRenderWindowInteractor()
    seen_by_slicer = []  # what Slicer's own interaction (lower priority) still receives
    for event in ("LeftButtonPressEvent", "MouseMoveEvent", "LeftButtonReleaseEvent"):
        interactor.AddObserver(getattr(vtk.vtkCommand, event), lambda caller, e: seen_by_slicer.append(e), 0.0)
    curve = closed_curve(scene, [], closed=False)
    strokes = []
    stroke = FreehandStroke([(interactor, lambda x, y: (xy_to_ras @ [x, y, 0, 1])[:3])], curve, strokes.append)

    def mouse(event, x, y, shift=False):
        interactor.SetEventInformation(x, y, 0, int(shift))
        interactor.InvokeEvent(getattr(vtk.vtkCommand, event))
    mouse("MouseMoveEvent", 10, 10)  # hovering is Slicer's
    assert seen_by_slicer == ["MouseMoveEvent"]
    # press at RAS (2, 5, 2), drag through (12, 5, 2) to (12, 5, 12), release: the coronal scribble of the
    # placed-curve test, painted
    mouse("LeftButtonPressEvent", 30, 34)
    for x in range(30, 19, -1):
        mouse("MouseMoveEvent", x, 34)
    for y in range(34, 45):
        mouse("MouseMoveEvent", 20, y)
    mouse("LeftButtonReleaseEvent", 20, 44)
    assert strokes == [curve] and seen_by_slicer == ["MouseMoveEvent"]  # painting did not pan or scroll
    expected = [(i, 5, 1) for i in range(2, 13)] + [(12, 5, k) for k in range(2, 7)]
    assert markups.scribble_to_points(curve, ct).tolist() == [list(p) for p in expected]
    mouse("LeftButtonPressEvent", 30, 34, shift=True)  # a modified click keeps Slicer's meaning
    mouse("LeftButtonReleaseEvent", 30, 34, shift=True)
    assert len(strokes) == 1 and seen_by_slicer[-2:] == ["LeftButtonPressEvent", "LeftButtonReleaseEvent"]
    stroke.stop()
    mouse("LeftButtonPressEvent", 30, 34)
    mouse("LeftButtonReleaseEvent", 30, 34)
    assert len(strokes) == 1 and seen_by_slicer[-1] == "LeftButtonReleaseEvent"


def test_one_write_is_one_undo_step_and_undo_restores_the_segment_and_the_session(scene, segmentation, ct):
    seg = segmentation.GetSegmentation()
    target, other = seg.AddEmptySegment("target"), seg.AddEmptySegment("other")
    other_mask = np.zeros(SHAPE, np.uint8)
    other_mask[2:6, 5:15, 5:15] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(other_mask, segmentation, other, ct)
    worker = ModelWorker()
    try:
        c = Controller(worker)
        logic = undo.new_editor_logic(scene, segmentation)
        c.attach(FakeSession(), ct, segmentation, undo.SegmentationUndo(segmentation, logic))
        c.state.update(connection="connected", session_open=True)
        c.select_segment(target)
        assert not c.state.enabled("undoButton")
        c.add_points(target, [[3, 4, 2]], [1])
        worker.wait_all()
        first = _segment_masks(segmentation, ct)
        c.add_points(target, [[6, 7, 3]], [1])
        worker.wait_all()
        c.add_points(target, [[6, 7, 3]], [1])  # same voxel again: no change, no new Slicer step
        worker.wait_all()
        assert c.state.enabled("undoButton") and segments.segment_array(segmentation, target, ct).sum() == 2
        c.undo()
        worker.wait_all()
        after = _segment_masks(segmentation, ct)
        assert all(np.array_equal(after[s], first[s]) and after[s].dtype == first[s].dtype for s in first)
        assert np.array_equal(after[other], other_mask)
        # the session undid both of its steps after the visible one, so it shows what the segment shows
        assert c.session.undone == [c.objects[target]] * 2
        assert np.array_equal(c.session.masks_by_obj[c.objects[target]], after[target])
        assert c.state.enabled("redoButton")
        c.redo()  # the panel's Redo: Slicer's history, then the session
        worker.wait_all()
        assert c.session.redone == [c.objects[target]] * 2 and not c.state.enabled("redoButton")
        assert segments.segment_array(segmentation, target, ct).sum() == 2
        c.undo()
        worker.wait_all()
        assert np.array_equal(c.session.masks_by_obj[c.objects[target]], after[target])
        c.undo()
        worker.wait_all()
        assert segments.segment_array(segmentation, target, ct).sum() == 0 and not c.state.enabled("undoButton")
        assert not logic.CanUndo()  # one history: the panel walked Slicer's, there is no other
        with pytest.raises(InputError, match="nothing to undo"):
            c.undo()
    finally:
        worker.stop()


def test_undo_and_redo_by_slicers_own_history_keep_the_session_in_step(scene, segmentation, ct):
    """The Segment Editor's Undo/Redo buttons call its logic's Undo/Redo: the session follows both."""
    seg = segmentation.GetSegmentation()
    target, other = seg.AddEmptySegment("target"), seg.AddEmptySegment("other")
    worker = ModelWorker()
    try:
        c = Controller(worker)
        logic = undo.new_editor_logic(scene, segmentation)
        c.attach(FakeSession(), ct, segmentation, undo.SegmentationUndo(segmentation, logic))
        loop = []  # the Qt event loop the module defers ``sync`` to
        c.defer = loop.append
        messages = []
        c.message.connect(messages.append)
        c.add_points(target, [[3, 4, 2]], [1])
        worker.wait_all()
        c.add_box(other, (1, 1, 1, 2, 2, 1))  # another segment's step in between
        worker.wait_all()
        c.add_points(target, [[6, 7, 3]], [1])
        worker.wait_all()
        obj, session = c.objects[target], c.session

        def in_step() -> bool:
            return all(np.array_equal(session.masks_by_obj[c.objects[s]], segments.segment_array(segmentation, s, ct))
                       for s in (target, other))
        assert in_step()
        logic.Undo()  # what the Segment Editor's Undo button does
        worker.wait_all()
        assert session.undone == [obj] and in_step() and segments.segment_array(segmentation, target, ct).sum() == 1
        logic.Undo()  # the other segment's step: only its object is undone
        worker.wait_all()
        assert session.undone == [obj, c.objects[other]] and in_step()
        logic.Redo()
        logic.Redo()
        worker.wait_all()
        assert session.redone == [c.objects[other], obj] and in_step()
        assert segments.segment_array(segmentation, target, ct).sum() == 2
        logic.Undo()
        worker.wait_all()
        assert in_step()
        # the next click refines the restored mask: the undone voxel does not come back
        c.add_points(target, [[10, 11, 4]], [1])
        worker.wait_all()
        mask = segments.segment_array(segmentation, target, ct)
        assert mask[3, 7, 6] == 0 and mask[4, 11, 10] == 1 and mask.sum() == 2 and in_step()
        assert not logic.CanRedo()  # a new step ends the redo branch, in Slicer and in the session
        # an edit outside the module becomes a mask prompt on the slice it changed; undoing it undoes that step
        logic.SaveStateForUndo()  # what a Segment Editor effect does before it paints
        painted = mask.copy()
        painted[0, 0, 0] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(painted, segmentation, target, ct)
        while loop:
            loop.pop(0)()
        worker.wait_all()
        assert messages and "1 slice prompt" in messages[-1] and in_step()
        assert [(o, k) for o, k, _ in session.masks] == [(obj, 0)] and np.array_equal(session.masks[0][2], painted[0])
        calls = len(session.undone)
        logic.Undo()
        worker.wait_all()
        assert session.undone[calls:] == [obj] and in_step()
        logic.Undo()  # back past the click given after the undo
        worker.wait_all()
        assert in_step() and segments.segment_array(segmentation, target, ct).sum() == 1
    finally:
        worker.stop()


class SegmentEditorStandIn:
    """The Segment Editor module's editor widget as the panel sees it: its slots drive its own editor logic,
    as ``qMRMLSegmentEditorWidget`` does; the panel cannot observe that logic's history."""

    def __init__(self, scene, node) -> None:
        self.node, self.logic = node, slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
        self.logic.SetSegmentationNode(node)

    def segmentationNode(self):
        return self.node

    def saveStateForUndo(self):
        self.logic.SaveStateForUndo()

    def undo(self):
        self.logic.Undo()

    def redo(self):
        self.logic.Redo()


def test_when_the_segment_editor_shows_the_segmentation_its_history_is_the_one_and_the_session_follows(
        scene, segmentation, ct, monkeypatch):
    from types import SimpleNamespace

    editor = SegmentEditorStandIn(scene, segmentation)
    monkeypatch.setattr(slicer.modules, "SegmentEditorWidget", SimpleNamespace(editor=editor), raising=False)
    sid = segmentation.GetSegmentation().AddEmptySegment("target")
    worker = ModelWorker()
    try:
        c = Controller(worker)
        own = undo.new_editor_logic(scene, segmentation)
        c.attach(FakeSession(), ct, segmentation, undo.SegmentationUndo(segmentation, own))
        loop = []  # the Qt event loop: the only way the panel hears of the editor's undo
        c.defer = loop.append
        for point in ([3, 4, 2], [6, 7, 3]):
            c.add_points(sid, [point], [1])
            worker.wait_all()
        assert editor.logic.CanUndo() and not own.CanUndo()  # the writes went into the editor's history only
        editor.undo()  # the Segment Editor's Undo button
        assert loop and c.session.undone == []
        while loop:
            loop.pop(0)()
        worker.wait_all()
        obj = c.objects[sid]
        assert c.session.undone == [obj]
        assert np.array_equal(c.session.masks_by_obj[obj], segments.segment_array(segmentation, sid, ct))
        c.undo()  # the panel's Undo walks the same (the editor's) history
        while loop:
            loop.pop(0)()
        worker.wait_all()
        assert c.session.undone == [obj, obj] and not segments.segment_array(segmentation, sid, ct).any()
        editor.redo()
        while loop:
            loop.pop(0)()
        worker.wait_all()
        assert c.session.redone == [obj]
        assert np.array_equal(c.session.masks_by_obj[obj], segments.segment_array(segmentation, sid, ct))
    finally:
        worker.stop()


def _ball_ct(size: int):
    """A bright ball in dark air (8 slices of size x size) as a volume node: (ball mask [k, j, i], node)."""
    k, j, i = np.mgrid[:8, :size, :size]
    ball = ((k - 4) / 3.5) ** 2 + ((j - size / 2) / (size * 0.22)) ** 2 + ((i - size * 0.47) / (size * 0.25)) ** 2 < 1
    return ball, slicer.util.addVolumeFromArray(np.where(ball, 120, -900).astype(np.int16), np.diag([0.8, 0.8, 2.5, 1]),
                                                "ct")


def test_slicer_undo_and_redo_keep_a_real_tiny_session_in_step(scene, monkeypatch):
    """The real engine: after Slicer's undo the session's mask is the segment, and the next click refines it."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    from medvlsam2.factory import load_model
    from medvlsam2.session import Session

    ball, ct = _ball_ct(48)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.CreateDefaultDisplayNodes()
    sid = node.GetSegmentation().AddEmptySegment("ball")
    torch.manual_seed(0)
    session = Session(load_model("tiny"), geometry.volume_from_node(ct))
    worker = ModelWorker()
    try:
        c = Controller(worker)
        logic = undo.new_editor_logic(scene, node)
        c.attach(session, ct, node, undo.SegmentationUndo(node, logic))
        c.add_mask(sid, 2, ball[2])
        worker.wait_all()
        restored = segments.segment_array(node, sid, ct)
        c.add_mask(sid, 5, ball[5])
        worker.wait_all()
        both = segments.segment_array(node, sid, ct)
        obj = c.objects[sid]
        assert restored[2].any() and both[5].any() and np.array_equal(session.mask(obj), both)
        logic.Undo()  # the Segment Editor's Undo button
        worker.wait_all()
        assert np.array_equal(segments.segment_array(node, sid, ct), restored)
        assert np.array_equal(session.mask(obj), restored)
        logic.Redo()
        worker.wait_all()
        assert np.array_equal(session.mask(obj), both) and np.array_equal(segments.segment_array(node, sid, ct), both)
        logic.Undo()
        worker.wait_all()
        c.add_points(sid, [[22, 24, 2]], [1])  # the next click starts from the restored mask: slice 5 stays empty
        worker.wait_all()
        now = segments.segment_array(node, sid, ct)
        assert np.array_equal(session.mask(obj), now) and c.state.error == ""
        assert np.array_equal(np.delete(now, 2, axis=0), np.delete(restored, 2, axis=0)) and not now[5].any()
    finally:
        worker.stop()
        session.close()


def test_switching_volumes_twenty_times_leaves_one_open_session(segmentation, ct):
    worker = ModelWorker()
    try:
        c = Controller(worker)
        sessions = [FakeSession() for _ in range(20)]
        for s in sessions:
            c.attach(s, ct, segmentation)
        worker.wait_all()
        assert [s.closed for s in sessions] == [True] * 19 + [False]
        c.attach(None, ct, segmentation)  # panel cleanup / stop
        worker.wait_all()
        assert sessions[-1].closed
    finally:
        worker.stop()


def _segment_masks(node, volume_node) -> dict[str, np.ndarray]:
    seg = node.GetSegmentation()
    return {seg.GetNthSegmentID(n): segments.segment_array(node, seg.GetNthSegmentID(n), volume_node)
            for n in range(seg.GetNumberOfSegments())}


def test_a_result_written_into_one_segment_leaves_every_other_segment_bit_identical(segmentation, ct):
    seg = segmentation.GetSegmentation()
    ids = [seg.AddEmptySegment(name) for name in ("target", "neighbour", "far")]
    masks = [np.zeros(SHAPE, np.uint8) for _ in ids]
    masks[0][2:5, 4:10, 4:10] = 1
    masks[1][3:7, 10:20, 10:20] = 1
    masks[2][0:2, 20:24, 25:32] = 1
    for sid, mask in zip(ids, masks):
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, sid, ct)
    keys = [segments.content_key(segmentation, sid) for sid in ids]
    seg.CollapseBinaryLabelmaps(False)  # non-overlapping segments share one labelmap, as the Segment Editor makes
    assert seg.GetNumberOfLayers() == 1
    # the state fingerprint follows the voxels, not the layer, extent or label value they are stored with
    assert [segments.content_key(segmentation, sid) for sid in ids] == keys and len(set(keys)) == 3
    before = _segment_masks(segmentation, ct)
    patch = np.ones((4, 10, 12), np.uint8)  # overlaps "neighbour"
    patch[:, 0, :] = 0
    result = SegmentationResult(1, "target", (2, 6, 6, 16, 5, 17), patch)
    history = undo.SegmentationUndo(segmentation, undo.new_editor_logic(slicer.mrmlScene, segmentation))
    assert segments.write_result(segmentation, ids[0], ct, result, history.save)
    # hashing only the written slices again gives the whole fingerprint
    assert segments.content_key(segmentation, ids[0], keys[0], (2, 6)) == segments.content_key(segmentation, ids[0])
    assert segments.content_key(segmentation, ids[0]) != keys[0]
    after = _segment_masks(segmentation, ct)
    for sid in ids[1:]:
        assert after[sid].dtype == before[sid].dtype and np.array_equal(after[sid], before[sid])
    expected = before[ids[0]].copy()
    result.apply_to(expected)
    assert np.array_equal(after[ids[0]], expected)
    assert changed_region(before[ids[0]], after[ids[0]]) is not None
    # one write was one undo step, and undoing it brings back exactly what was there
    assert history.logic.CanUndo()
    history.undo()
    assert all(np.array_equal(m, before[s]) for s, m in _segment_masks(segmentation, ct).items())


def test_write_is_refused_when_the_result_does_not_fit_the_volume(segmentation, ct):
    sid = segmentation.GetSegmentation().AddEmptySegment("a")
    with pytest.raises(InputError, match="outside the volume"):
        segments.write_patch(segmentation, sid, ct, (0, 9, 0, 4, 0, 4), np.ones((9, 4, 4), np.uint8))
    calls = []
    assert not segments.write_patch(segmentation, sid, ct, (0, 1, 0, 2, 0, 2), np.zeros((1, 2, 2)),
                                    lambda: calls.append(1))
    assert calls == []  # nothing changed: no undo state saved


def test_writes_change_only_the_box_and_grow_the_labelmap_only_when_needed(segmentation, ct):
    sid = segmentation.GetSegmentation().AddEmptySegment("a")
    first = np.zeros((2, 3, 4), np.uint8)
    first[1, 1, 1:3] = 1
    assert segments.write_patch(segmentation, sid, ct, (3, 5, 10, 13, 20, 24), first)
    labelmap = segmentation.GetBinaryLabelmapInternalRepresentation(sid)
    extent = labelmap.GetExtent()
    assert segments._same_grid(labelmap, segmentation, ct)  # later writes take the in-place path
    expected = np.zeros(SHAPE, np.uint8)
    expected[3:5, 10:13, 20:24] = first
    assert np.array_equal(segments.segment_array(segmentation, sid, ct), expected)
    # a write inside the current extent leaves the extent alone and keeps the same labelmap object
    assert segments.write_patch(segmentation, sid, ct, (4, 5, 11, 12, 21, 22), np.zeros((1, 1, 1), np.uint8))
    expected[4, 11, 21] = 0
    assert segmentation.GetBinaryLabelmapInternalRepresentation(sid) is labelmap and labelmap.GetExtent() == extent
    assert np.array_equal(segments.segment_array(segmentation, sid, ct), expected)
    # a patch whose ones reach past the extent grows it, keeping what was there
    far = np.ones((1, 2, 2), np.uint8)
    assert segments.write_patch(segmentation, sid, ct, (0, 1, 0, 2, 0, 2), far)
    expected[0, 0:2, 0:2] = 1
    grown = segmentation.GetBinaryLabelmapInternalRepresentation(sid).GetExtent()
    assert grown[0] <= 0 and grown[2] <= 0 and grown[4] <= 0 and grown[1] >= 22 and grown[5] >= 4
    assert np.array_equal(segments.segment_array(segmentation, sid, ct), expected)


class FakeSession:
    """Session stand-in whose answers are known exactly (the real one is used in the last test); it keeps the
    ``medvlsam2.api.SessionAPI`` (Testing/Python/test_conformance.py runs the shared scenario on it)."""

    capabilities = frozenset({"interactive", "text_segmentation", "language"})

    def __init__(self) -> None:
        self.next_id = 0
        self.names: dict[int, str] = {}
        self.bounds: dict[int, tuple[int, int] | None] = {}
        self.gate = threading.Event()
        self.closed = False
        self.masks: list[tuple[int, int, np.ndarray]] = []  # mask prompts received
        self.masks_by_obj: dict[int, np.ndarray] = {}
        self.history: dict[int, list[np.ndarray]] = {}
        self.undone: list[int] = []
        self.redone: list[int] = []
        self.future: dict[int, list[np.ndarray]] = {}

    def close(self):
        self.closed = True

    def _known(self, obj):
        from medvlsam2.errors import UnknownObjectError

        if obj not in self.names:
            raise UnknownObjectError(f"unknown object {obj}")
        return obj

    def _commit(self, obj, bbox, patch):
        mask = self.masks_by_obj.setdefault(self._known(obj), np.zeros(SHAPE, np.uint8))
        self.history.setdefault(obj, []).append(mask.copy())
        self.future[obj] = []
        k0, k1, j0, j1, i0, i1 = bbox
        mask[k0:k1, j0:j1, i0:i1] = patch
        return SegmentationResult(obj, self.names[obj], bbox, patch)

    def undo(self, obj):
        self.undone.append(self._known(obj))
        self.future[obj].append(self.masks_by_obj[obj])
        return self._restore(obj, self.history[obj].pop())

    def redo(self, obj):
        self.redone.append(self._known(obj))
        self.history[obj].append(self.masks_by_obj[obj])
        return self._restore(obj, self.future[obj].pop())

    def reset(self, obj):
        return self._commit(obj, (0, SHAPE[0], 0, SHAPE[1], 0, SHAPE[2]), np.zeros(SHAPE, np.uint8))

    def _restore(self, obj, mask):
        bbox = changed_region(self.masks_by_obj[obj], mask) or (0, 1, 0, 1, 0, 1)
        self.masks_by_obj[obj] = mask
        k0, k1, j0, j1, i0, i1 = bbox
        return SegmentationResult(obj, self.names[obj], bbox, mask[k0:k1, j0:j1, i0:i1].copy())

    def mask(self, obj):
        return self.masks_by_obj.get(obj, np.zeros(SHAPE, np.uint8)).copy()

    def add_mask(self, obj, k, mask2d):
        self.masks.append((obj, k, mask2d))
        return self._commit(obj, (k, k + 1, 0, SHAPE[1], 0, SHAPE[2]), mask2d[None].astype(np.uint8))

    def add_object(self, name=None):
        self.next_id += 1
        self.names[self.next_id] = name or f"object {self.next_id}"
        return self.next_id

    def objects(self):
        return dict(self.names)

    def mask(self, obj):
        return self.masks_by_obj.get(self._known(obj), np.zeros(SHAPE, np.uint8)).copy()

    def bound(self, obj):
        return self.bounds.get(self._known(obj))

    def remove(self, obj):
        del self.names[self._known(obj)]
        self.masks_by_obj.pop(obj, None)

    def segment_text(self, prompt, cancel=None, progress=None, force=False):
        out = TextResult()
        for n, name in enumerate(prompt.split(" and ")):
            if name == "absent" and not force:
                out.not_found.append(NotFound(name, "the model answered that there is no absent"))
                continue
            obj = self.add_object(name)
            out.found.append(self._commit(obj, (n, n + 1, 0, 3, 0, 3), np.ones((1, 3, 3), np.uint8)))
        return out

    def propagate(self, obj, k_range=None, direction="both", cancel=None, progress=None):
        for k in range(SHAPE[0]):
            progress(k, SHAPE[0])
            self.gate.wait(5)
            cancel.raise_if_cancelled()
        return self._commit(obj, (0, SHAPE[0], 0, SHAPE[1], 0, SHAPE[2]), np.ones(SHAPE, np.uint8))

    def add_points(self, obj, points_ijk, labels):
        if any(label not in (1, -1) for label in labels):
            raise InputError("point labels must be +1 (include) or -1 (exclude)")
        i, j, k = (int(v) for v in points_ijk[0])
        return self._commit(obj, (k, k + 1, j, j + 1, i, i + 1), np.ones((1, 1, 1), np.uint8))

    def add_box(self, obj, box, k=None, ends=False):
        if len(box) == 4:
            i0, j0, i1, j1 = (int(v) for v in box)
            k0 = k1 = int(k)
        else:
            i0, j0, k0, i1, j1, k1 = (int(v) for v in box)
            self.bounds[self._known(obj)] = (k0, k1)
        return self._commit(obj, (k0, k1 + 1, j0, j1 + 1, i0, i1 + 1), np.ones((k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1), np.uint8))

    def ask(self, question, context=None, cancel=None):
        yield from ["It ", "is ", "normal."]

    def report(self, cancel=None):
        yield from ["Liver: ", "normal. ", "Spleen: normal."]


@pytest.fixture
def controller(segmentation, ct):
    worker = ModelWorker()
    c = Controller(worker)
    c.attach(FakeSession(), ct, segmentation)
    c.state.update(connection="connected", session_open=True)
    yield c
    worker.stop()


def terminology_tag(segment) -> str:
    value = vtk.reference("")
    segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value)
    return str(value)


def test_text_prompts_create_named_coloured_segments_with_terminology(controller, segmentation):
    controller.segment_text("Liver\n\nleft kidney and tumour\nmy odd structure\n")
    controller.worker.wait_all()
    seg = segmentation.GetSegmentation()
    names = [seg.GetNthSegment(n).GetName() for n in range(seg.GetNumberOfSegments())]
    assert names == ["Liver", "left kidney and tumour: left kidney", "left kidney and tumour: tumour", "my odd structure"]
    liver = seg.GetNthSegment(0)
    np.testing.assert_allclose(liver.GetColor(), np.array(table.match("liver").term.color) / 255)
    assert "SCT^10200004^Liver" in terminology_tag(liver)
    assert "~SCT^64033007^Kidney~SCT^7771000^Left~" in terminology_tag(seg.GetNthSegment(1))  # Slicer's codes
    assert "~SCT^4147007^Mass~" in terminology_tag(seg.GetNthSegment(2))
    np.testing.assert_allclose(seg.GetNthSegment(2).GetColor(), np.array(table.match("tumour").term.color) / 255)
    unmatched = terminology_tag(seg.GetNthSegment(3))  # Slicer's default ("Tissue") or nothing
    assert unmatched == "" or "SCT^85756007^Tissue~" in unmatched
    assert len({tuple(seg.GetNthSegment(n).GetColor()) for n in (0, 2, 3)}) == 3
    tumour = segments.segment_array(segmentation, seg.GetNthSegmentID(2), controller.volume_node)
    assert tumour.sum() == 9 and tumour[1, :3, :3].all()
    assert not controller.state.busy and controller.state.error == ""


def test_a_target_not_found_reaches_the_panel_with_its_reason_and_no_segment(controller, segmentation):
    messages = []
    controller.message.connect(messages.append)
    controller.segment_text("liver and absent")
    controller.worker.wait_all()
    seg = segmentation.GetSegmentation()
    assert [seg.GetNthSegment(n).GetName() for n in range(seg.GetNumberOfSegments())] == ["liver and absent"]
    assert messages and messages[-1] == "Not found: absent (the model answered that there is no absent)"


def test_cancel_leaves_the_segmentation_unchanged(controller, segmentation, ct):
    sid = segmentation.GetSegmentation().AddEmptySegment("organ")
    controller.add_points(sid, [[3, 4, 2]], [1])
    controller.worker.wait_all()
    before = _segment_masks(segmentation, ct)
    assert before[sid].sum() == 1
    controller.propagate(sid)
    assert controller.state.busy and controller.state.enabled("cancelButton")
    assert not controller.state.enabled("pointButton")  # one model call at a time
    controller.cancel()
    controller.session.gate.set()
    controller.worker.wait_all()
    after = _segment_masks(segmentation, ct)
    assert all(np.array_equal(after[s], before[s]) for s in before)
    assert not controller.state.busy and controller.state.error == ""


def test_report_streams_and_round_trips_through_a_saved_scene(controller, scene, tmp_path):
    chunks = []
    controller.answer_chunk.connect(chunks.append)
    controller.report()
    controller.worker.wait_all()
    text = "Liver: normal. Spleen: normal."
    assert chunks == ["Liver: ", "normal. ", "Spleen: normal."]
    node = report_node.report_text_node(scene, create=False)
    assert node is not None and controller.state.enabled("saveReportButton")
    assert node.GetText().startswith("# Draft findings report") and text in node.GetText()  # the engine's draft of it
    edited = text + "\nImpression: no acute findings (edited by the reader)."
    report_node.set_report_text(node, edited)
    scene.SetRootDirectory(str(tmp_path))
    scene.SetURL(str(tmp_path / "scene.mrml"))
    node.AddDefaultStorageNode()
    node.GetStorageNode().SetFileName(str(tmp_path / "report.txt"))
    assert node.GetStorageNode().WriteData(node)
    assert scene.Commit()
    loaded = slicer.vtkMRMLScene()
    loaded.SetURL(str(tmp_path / "scene.mrml"))
    assert loaded.Connect()
    again = report_node.report_text_node(loaded, create=False)
    assert again is not None and again.GetText() == edited
    md = report_node.save_markdown(edited, tmp_path / "draft")
    assert md.name == "draft.md" and md.read_text(encoding="utf-8") == edited + "\n"  # as the reader left it


def test_the_worker_runs_a_real_tiny_session_and_its_result_lands_in_the_segment(scene, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    from medvlsam2.config import tiny
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.session import Session

    _, ct = _ball_ct(64)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    other = segmentation.GetSegmentation().AddEmptySegment("other")
    other_mask = np.zeros((8, 64, 64), np.uint8)
    other_mask[:, 30:40, 25:35] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(other_mask, segmentation, other, ct)
    target = segmentation.GetSegmentation().AddEmptySegment("tumour")

    torch.manual_seed(0)
    session = Session(MedVLSAM2.from_config(tiny()).eval(), geometry.volume_from_node(ct))
    worker = ModelWorker()
    try:
        c = Controller(worker)
        c.attach(session, ct, segmentation)
        c.state.update(connection="connected", session_open=True)
        main_thread = threading.get_ident()
        threads = []
        c.segments_written.connect(lambda ids: threads.append(threading.get_ident()))
        c.add_points(target, [[30, 32, 4]], [1])
        worker.wait_all(timeout=120)
        assert c.state.error == "" and threads == [main_thread]
        obj = c.objects[target]
        assert session.mask(obj).any()  # seeded tiny model: a non-empty mask, so the write is really checked
        assert np.array_equal(segments.segment_array(segmentation, target, ct), session.mask(obj))
        c.propagate(target, (2, 6), "both")
        worker.wait_all(timeout=120)
        assert c.state.error == ""
        assert np.array_equal(segments.segment_array(segmentation, target, ct), session.mask(obj))
        assert np.array_equal(segments.segment_array(segmentation, other, ct), other_mask)
    finally:
        worker.stop()


@pytest.fixture
def module_file(monkeypatch):
    """Import MedVLSAM2Slicer.py with stand-ins for the parts slicer-core lacks (Qt, ctk, the scripted-module base classes)."""
    import importlib.util
    import types

    base = types.ModuleType("slicer.ScriptedLoadableModule")

    class Logic:
        def getParameterNode(self):
            return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")

    base.ScriptedLoadableModuleLogic = Logic
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
        setattr(base, name, type(name, (), {}))
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = wrapper.Minimum = lambda value: value
    for name, module in {"qt": types.ModuleType("qt"), "ctk": types.ModuleType("ctk"),
                         "slicer.ScriptedLoadableModule": base, "slicer.parameterNodeWrapper": wrapper}.items():
        monkeypatch.setitem(sys.modules, name, module)
    path = Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer" / "MedVLSAM2Slicer.py"
    spec = importlib.util.spec_from_file_location("MedVLSAM2Slicer_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_logic_drives_a_session_and_reports_connection_errors(module_file, segmentation, ct):
    logic = module_file.MedVLSAM2SlicerLogic()
    try:
        assert {"base", "tiny"} <= {c.value for c in logic.model_choices()} and logic.weights_ready("tiny")
        sid = segmentation.GetSegmentation().AddEmptySegment("organ")
        logic.use_session(FakeSession(), ct, segmentation)
        logic.controller.add_points(sid, [[5, 6, 3]], [1])
        logic.controller.worker.wait_all()
        mask = segments.segment_array(segmentation, sid, ct)
        assert mask.sum() == 1 and mask[3, 6, 5] == 1
        logic.start("tiny", "cpu", "ftp://nowhere", "secret", "")
        logic.controller.worker.wait_all()
        state = logic.controller.state
        assert state.connection == "error" and "http://" in state.error and "secret" not in state.error
    finally:
        logic.shutdown()


def test_a_second_action_while_busy_is_refused_and_leaves_no_queued_text(controller, segmentation):
    seg = segmentation.GetSegmentation()
    first, second = seg.AddEmptySegment("first"), seg.AddEmptySegment("second")
    controller.select_segment(first)
    controller.add_points(first, [[1, 1, 1]], [1])
    controller.worker.wait_all()
    assert controller.state.segment_has_object
    controller.select_segment(second)
    assert not controller.state.segment_has_object  # "second" has no prompts yet
    messages = []
    controller.message.connect(messages.append)
    controller.propagate(first)
    assert controller.segment_text("liver\nspleen") is None and "busy" in messages[-1]
    controller.session.gate.set()
    controller.worker.wait_all()
    assert seg.GetNumberOfSegments() == 2  # the refused text prompts made nothing, now or later
    assert not controller.state.segment_has_object and controller.state.error == ""


@pytest.mark.skipif(__import__("os").environ.get("MEDVLSAM2_SERVER_TESTS") != "1",
                    reason="starts a real tiny server (~45 s on 2 busy cores); set MEDVLSAM2_SERVER_TESTS=1")
def test_start_launches_a_real_local_server_and_a_click_lands_in_the_segment(module_file, segmentation, ct,
                                                                               monkeypatch, tmp_path):
    pytest.importorskip("torch")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # the server log goes to ~/.cache/medvlsam2
    logic = module_file.MedVLSAM2SlicerLogic()
    try:
        ready = []
        logic.start("tiny", "cpu", "", "", "", on_ready=lambda: ready.append(True))
        logic.controller.worker.wait_all(timeout=300)
        state = logic.controller.state
        assert state.error == "" and state.connection == "connected" and ready == [True]
        assert "cpu" in state.status_text() and logic.connection.server.is_alive()
        sid = segmentation.GetSegmentation().AddEmptySegment("organ")
        logic.open_session(ct, segmentation)
        logic.controller.worker.wait_all(timeout=120)
        assert state.error == "" and logic.controller.session is not None
        logic.controller.add_points(sid, [[16, 12, 4]], [1])
        logic.controller.worker.wait_all(timeout=120)
        assert state.error == ""
        obj = logic.controller.objects[sid]
        assert np.array_equal(segments.segment_array(segmentation, sid, ct), logic.controller.session.mask(obj))
        server = logic.connection.server
        logic.stop()
        assert not server.is_alive() and state.connection == "disconnected"
    finally:
        logic.shutdown()


def test_the_logic_creates_the_panels_nodes_and_turns_drawn_prompts_into_calls(module_file, scene):
    ct = axial_ct()
    logic = module_file.MedVLSAM2SlicerLogic()
    try:
        segmentation, first = logic.ensure_segmentation(scene, ct)  # none selected: one is made for the CT
        assert segmentation.GetName() == "axial MedVLSAM2" and segmentation.GetSegmentation().GetNumberOfSegments() == 1
        assert logic.ensure_segmentation(scene, ct, segmentation) == (segmentation, first)  # reused, not duplicated
        assert logic.next_segment(segmentation, first) != first and segmentation.GetSegmentation().GetNumberOfSegments() == 2
        nodes = {kind: logic.prompt_node(scene, kind) for kind in ("point", "box", "lasso", "scribble")}
        assert nodes["box"].IsA("vtkMRMLMarkupsROINode") and nodes["lasso"].IsA("vtkMRMLMarkupsClosedCurveNode")
        assert all(logic.prompt_node(scene, k) is n for k, n in nodes.items())  # found again, not duplicated
        assert not nodes["point"].GetSaveWithScene()
        logic.use_session(FakeSession(), ct, segmentation)
        session = logic.controller.session
        seen = []
        session.add_points = lambda obj, points, labels: seen.append((points.tolist(), list(labels))) or \
            SegmentationResult(obj, "x", None, np.zeros((0, 0, 0), np.uint8))
        nodes["point"].AddControlPoint(vtk.vtkVector3d(3.0, 4.0, 4.0))
        logic.submit_drawn_prompt("point", nodes["point"], first, negative=True)
        logic.controller.worker.wait_all()
        assert seen == [([[3, 4, 2]], [-1])] and nodes["point"].GetNumberOfControlPoints() == 0  # sent, then cleared
        for p in ((2.0, 5.0, 2.0), (5.0, 5.0, 2.0)):
            nodes["scribble"].AddControlPoint(vtk.vtkVector3d(*p))
        logic.submit_drawn_prompt("scribble", nodes["scribble"], first, negative=False)
        logic.controller.worker.wait_all()
        assert seen[-1] == ([[2, 5, 1], [3, 5, 1], [4, 5, 1], [5, 5, 1]], [1, 1, 1, 1])
        # a negative lasso removes what it encloses from the segment's slice
        mask = np.zeros(SHAPE, np.uint8)
        mask[3, 2:10, 2:12] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, first, ct)
        for p in ((1.5, 1.5, 6.0), (6.5, 1.5, 6.0), (6.5, 12.5, 6.0), (1.5, 12.5, 6.0)):
            nodes["lasso"].AddControlPoint(vtk.vtkVector3d(*p))
        logic.submit_drawn_prompt("lasso", nodes["lasso"], first, negative=True)
        logic.controller.worker.wait_all()
        hand, (_, k, sent) = session.masks  # the hand-painted slice went to the session first, as a mask prompt
        assert hand[1] == 3 and np.array_equal(hand[2], mask[3])
        expected = mask[3].copy()
        expected[2:10, 2:7] = 0
        assert k == 3 and np.array_equal(sent, expected) and logic.controller.state.error == ""
        # a negative lasso on the coronal view becomes negative clicks on the axial slices it crosses
        for p in ((2.5, 5.0, 3.0), (8.5, 5.0, 3.0), (8.5, 5.0, 9.0), (2.5, 5.0, 9.0)):
            nodes["lasso"].AddControlPoint(vtk.vtkVector3d(*p))
        logic.submit_drawn_prompt("lasso", nodes["lasso"], first, negative=True)
        logic.controller.worker.wait_all()
        assert seen[-1] == ([[5, 5, 2], [5, 5, 3], [5, 5, 4]], [-1, -1, -1]) and len(session.masks) == 2
    finally:
        logic.shutdown()


def test_a_lasso_mask_prompt_runs_on_a_real_tiny_session_undoes_and_crosses_the_wire_format(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    from medvlsam2.factory import load_model
    from medvlsam2.io.volume import Volume
    from medvlsam2.protocol import encode_mask, validate_mask_prompt
    from medvlsam2.session import Session

    k, j, i = np.mgrid[:8, :64, :64]
    ball = ((k - 4) / 3.5) ** 2 + ((j - 32) / 14) ** 2 + ((i - 30) / 16) ** 2 < 1
    torch.manual_seed(0)
    session = Session(load_model("tiny"), Volume.from_ijk_to_ras(np.where(ball, 120, -900).astype(np.int16),
                                                                  np.diag([0.8, 0.8, 2.5, 1])))
    obj = session.add_object("lasso")
    lasso = ball[4].astype(np.uint8)
    result = session.add_mask(obj, 4, lasso)
    mask = session.mask(obj)
    # SAM2 uses a lone mask input as the slice's output (use_mask_input_as_output_without_sam), up to resampling
    dice = 2 * (mask[4] & lasso).sum() / (mask[4].sum() + lasso.sum())
    assert dice > 0.9 and not mask[np.arange(8) != 4].any() and result.bbox[0:2] == (4, 5)
    session.propagate(obj, (2, 6))
    assert session.mask(obj)[[3, 5]].any()  # the lasso slice conditions the propagation
    session.undo(obj)
    session.undo(obj)
    assert not session.mask(obj).any()
    with pytest.raises(InputError, match="one slice of shape"):
        session.add_mask(obj, 4, lasso[:10])
    with pytest.raises(InputError, match="slice k"):
        session.add_mask(obj, 8, lasso)
    # what the client sends is what the server hands the session
    got_k, got = validate_mask_prompt({"k": 4, "shape": [64, 64], "mask": encode_mask(lasso[None])})
    assert got_k == 4 and np.array_equal(got, lasso)
    for bad in ({"k": True, "shape": [64, 64], "mask": ""}, {"k": 1, "shape": [64, 10 ** 6], "mask": ""},
                {"k": 1, "shape": [64, 64], "mask": encode_mask(np.ones((1, 64, 65)))}):
        with pytest.raises(InputError):
            validate_mask_prompt(bad)


def test_text_prompt_segments_take_slicers_terminology_and_fall_back_to_the_table(controller, segmentation, tmp_path):
    import json

    # a terminology in Slicer's own format (as its General Anatomy list: Kidney's colours per side), with
    # colours unlike the project's table
    side = {"CodingSchemeDesignator": "SCT", "CodeValue": "7771000", "CodeMeaning": "Left"}
    (tmp_path / "anatomy.json").write_text(json.dumps({
        "SegmentationCategoryTypeContextName": terminology.TERMINOLOGY_CONTEXT,
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#",
        "SegmentationCodes": {"Category": [{
            "CodeMeaning": "Anatomical Structure", "CodingSchemeDesignator": "SCT", "CodeValue": "123037004",
            "showAnatomy": "false",
            "Type": [{"CodeMeaning": "Liver", "CodingSchemeDesignator": "SCT", "CodeValue": "10200004",
                      "recommendedDisplayRGBValue": [10, 20, 30], "3dSlicerLabel": "liver"},
                     {"CodeMeaning": "Kidney", "CodingSchemeDesignator": "SCT", "CodeValue": "64033007",
                      "Modifier": [{**side, "recommendedDisplayRGBValue": [40, 50, 60]}]}]}]}}))
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert logic.LoadTerminologyFromFile(str(tmp_path / "anatomy.json")) == terminology.TERMINOLOGY_CONTEXT
    controller.terminology_logic = logic
    controller.segment_text("liver\ntumour\nleft kidney\nright kidney")
    controller.worker.wait_all()
    seg = segmentation.GetSegmentation()
    liver, tumour, left, right = (seg.GetNthSegment(n) for n in range(4))
    np.testing.assert_allclose(liver.GetColor(), np.array([10, 20, 30]) / 255)  # Slicer's, not the table's
    assert terminology_tag(liver) == logic.SerializeTerminologyEntry(_entry(logic, liver))
    assert "SCT^10200004^Liver" in terminology_tag(liver)
    # the side is Slicer's type modifier, with its colour
    assert _entry(logic, left).GetTypeModifierObject().GetCodeValue() == "7771000"
    assert "~SCT^64033007^Kidney~SCT^7771000^Left~" in terminology_tag(left)
    np.testing.assert_allclose(left.GetColor(), np.array([40, 50, 60]) / 255)
    # where Slicer's list lacks the type (Mass) or the side (Right), the project's table gives code and colour
    assert "~SCT^4147007^Mass~" in terminology_tag(tumour)
    np.testing.assert_allclose(tumour.GetColor(), np.array(table.match("tumour").term.color) / 255)
    assert "~SCT^64033007^Kidney~SCT^24028007^Right~" in terminology_tag(right)
    np.testing.assert_allclose(right.GetColor(), np.array(table.match("kidney").term.color) / 255)


def _entry(logic, segment):
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(terminology_tag(segment), entry)
    return entry


@pytest.mark.skipif(__import__("os").environ.get("MEDVLSAM2_SERVER_TESTS") != "1",
                    reason="starts a real tiny server (~45 s on 2 busy cores); set MEDVLSAM2_SERVER_TESTS=1")
def test_twenty_volume_switches_leave_one_server_session_and_a_lasso_crosses_the_wire(module_file, scene, monkeypatch,
                                                                                      tmp_path):
    pytest.importorskip("torch")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    logic = module_file.MedVLSAM2SlicerLogic()
    try:
        logic.start("tiny", "cpu", "", "", "")
        logic.controller.worker.wait_all(timeout=300)
        assert logic.controller.state.error == ""
        rng = np.random.default_rng(0)
        volumes = [slicer.util.addVolumeFromArray(rng.integers(-900, 200, SHAPE).astype(np.int16),
                                                  np.diag([1.0, 1.0, 2.0, 1.0]), f"ct{n}") for n in range(20)]
        segmentation, sid = logic.ensure_segmentation(scene, volumes[0])
        for volume in volumes:  # what the panel does on each volume switch
            logic.open_session(volume, segmentation)
            logic.controller.worker.wait_all(timeout=120)
            assert logic.controller.state.error == ""
        health = logic.connection.client.health()
        assert health["sessions"] == 1 and health["live_engine_sessions"] == 1, health
        lasso = np.zeros(SHAPE[1:], np.uint8)
        lasso[5:15, 8:20] = 1
        logic.controller.add_mask(sid, 3, lasso)
        logic.controller.worker.wait_all(timeout=120)
        assert logic.controller.state.error == ""
        obj = logic.controller.objects[sid]
        assert np.array_equal(segments.segment_array(segmentation, sid, volumes[-1]), logic.controller.session.mask(obj))
        assert logic.controller.session.mask(obj)[3].any()
        logic.stop()  # panel cleanup: the last session is closed too
    finally:
        logic.shutdown()
