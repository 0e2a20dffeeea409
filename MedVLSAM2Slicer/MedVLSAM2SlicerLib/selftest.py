"""The module's self-test body (Slicer-only): a point and a text prompt on the tiny model with a sample CT.

Called from ``MedVLSAM2SlicerTest`` in the module file (Developer Tools > Reload and Test).
"""

from __future__ import annotations

from typing import Callable

import slicer
import vtk


def point_and_text_prompts(test, make_logic: Callable[[], object]) -> None:
    """Run on ``test`` (a ScriptedLoadableModuleTest); ``make_logic`` builds the module's logic."""
    import importlib.util

    missing = [m for m in ("torch", "sam2", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        test.delayDisplay(f"Skipping inference: {', '.join(missing)} not installed (press Start in the module "
                          "to install them)")
        return
    import numpy as np
    import SampleData
    import torch

    from medvlsam2.config import tiny
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.session import Session

    from .geometry import volume_from_node
    from .segments import segment_array

    test.delayDisplay("Loading sample CT")
    full = SampleData.downloadSample("CTChest")
    # a small crop keeps the CPU test short
    crop = slicer.util.arrayFromVolume(full)[::8, ::8, ::8].copy()
    ijk = vtk.vtkMatrix4x4()
    full.GetIJKToRASMatrix(ijk)
    m = np.array([[ijk.GetElement(r, c) for c in range(4)] for r in range(4)])
    m[:3, :3] *= 8
    volume = slicer.util.addVolumeFromArray(crop, m, "MedVLSAM2 test CT")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.CreateDefaultDisplayNodes()
    segmentId = segmentation.GetSegmentation().AddEmptySegment("clicked")

    torch.manual_seed(0)
    logic = make_logic()
    try:
        session = Session(MedVLSAM2.from_config(tiny()).eval(), volume_from_node(volume))
        logic.use_session(session, volume, segmentation)
        k, j, i = (s // 2 for s in crop.shape)
        logic.controller.add_points(segmentId, [[i, j, k]], [1])
        logic.controller.worker.wait_all(timeout=300)
        test.assertEqual(logic.controller.state.error, "")
        obj = logic.controller.objects[segmentId]
        test.assertTrue(np.array_equal(segment_array(segmentation, segmentId, volume), session.mask(obj)))
        before = segmentation.GetSegmentation().GetNumberOfSegments()
        logic.controller.segment_text("liver")
        logic.controller.worker.wait_all(timeout=300)
        test.assertEqual(logic.controller.state.error, "")
        names = [segmentation.GetSegmentation().GetNthSegment(n).GetName()
                 for n in range(before, segmentation.GetSegmentation().GetNumberOfSegments())]
        test.assertTrue(all(name.startswith("liver") for name in names))
    finally:
        logic.shutdown()
    test.delayDisplay("Test passed")
