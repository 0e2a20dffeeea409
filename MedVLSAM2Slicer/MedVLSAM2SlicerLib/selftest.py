"""The module's self-test body (Slicer-only): the panel loads, then point, box, scribble, text and undo run on
the tiny random-weight model with a small synthetic phantom (no download).

Called from ``MedVLSAM2SlicerTest`` in the module file (Developer Tools > Reload and Test) and by
``Testing/Slicer/smoke.py``.
"""

from __future__ import annotations

from typing import Callable

import slicer
import vtk


def prompts_and_undo(test, make_logic: Callable[[], object]) -> None:
    """Run on ``test`` (a ScriptedLoadableModuleTest); ``make_logic`` builds the module's logic."""
    import importlib.util

    missing = [m for m in ("torch", "sam2", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        test.delayDisplay(f"Skipping inference: {', '.join(missing)} not installed (press Start in the module "
                          "to install them)")
        return
    import numpy as np
    import torch

    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.factory import load_model
    from medvlsam2.session import Session

    from .geometry import volume_from_node
    from .markups import RoiBoxTracker
    from .segments import segment_array

    test.delayDisplay("Loading the panel")
    widget = slicer.modules.medvlsam2slicer.widgetRepresentation()  # builds the panel: .ui, parameter node binding
    test.assertIsNotNone(widget)

    test.delayDisplay("Synthetic phantom, tiny random model")
    case = generate_case(0, shape=(8, 64, 64), spacing=(5.6, 5.6, 5.0))
    volume = slicer.util.addVolumeFromArray(case.volume.array, case.volume.ijk_to_ras(), "MedVLSAM2 test CT")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    clicked = segmentation.GetSegmentation().AddEmptySegment("clicked")
    boxed = segmentation.GetSegmentation().AddEmptySegment("boxed")

    torch.manual_seed(0)
    logic = make_logic()
    c = logic.controller
    try:
        session = Session(load_model("tiny"), volume_from_node(volume))
        logic.use_session(session, volume, segmentation)
        k, j, i = 4, 32, 32
        c.add_points(clicked, [[i, j, k]], [1])
        c.worker.wait_all(timeout=300)
        test.assertEqual(c.state.error, "")
        obj = c.objects[clicked]
        test.assertTrue(np.array_equal(segment_array(segmentation, clicked, volume), session.mask(obj)))

        # a box drawn by two corner clicks runs once, on the voxels it encloses
        roi = logic.prompt_node(slicer.mrmlScene, "box")
        ijk_to_ras = case.volume.ijk_to_ras()
        boxes = []
        tracker = RoiBoxTracker(roi, volume, lambda box: (boxes.append(box), c.add_box(boxed, box)), test.fail)
        roi.AddControlPoint(vtk.vtkVector3d(*(ijk_to_ras @ [20, 20, 3, 1])[:3]))
        roi.AddControlPoint(vtk.vtkVector3d(*(ijk_to_ras @ [44, 44, 5, 1])[:3]))
        c.worker.wait_all(timeout=300)
        tracker.stop()
        test.assertEqual(len(boxes), 1)
        test.assertEqual(c.state.error, "")

        # undo (Slicer's history) takes back exactly the last write, and the session's step with it
        before = segment_array(segmentation, boxed, volume).copy()
        scribble = logic.prompt_node(slicer.mrmlScene, "scribble")
        for p in ([24, 30, 4], [40, 30, 4]):
            scribble.AddControlPoint(vtk.vtkVector3d(*(ijk_to_ras @ [*p, 1])[:3]))
        logic.submit_drawn_prompt("scribble", scribble, boxed, negative=True)
        c.worker.wait_all(timeout=300)
        test.assertEqual(c.state.error, "")
        if c.can_undo and not np.array_equal(segment_array(segmentation, boxed, volume), before):
            c.undo()
            slicer.app.processEvents()  # the deferred sync queues the session's undo
            c.worker.wait_all(timeout=300)
            test.assertTrue(np.array_equal(segment_array(segmentation, boxed, volume), before))
            test.assertTrue(np.array_equal(session.mask(c.objects[boxed]), before))

        count = segmentation.GetSegmentation().GetNumberOfSegments()
        c.segment_text("liver")
        c.worker.wait_all(timeout=300)
        if "text_segmentation" in session.capabilities:
            test.assertEqual(c.state.error, "")
            names = [segmentation.GetSegmentation().GetNthSegment(n).GetName()
                     for n in range(count, segmentation.GetSegmentation().GetNumberOfSegments())]
            test.assertTrue(all(name.startswith("liver") for name in names))
    finally:
        logic.shutdown()
    test.delayDisplay("Test passed")
