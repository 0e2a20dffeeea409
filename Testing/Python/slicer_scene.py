"""A slicer-core scene with the module logics ``slicer.util`` needs (FIELD_NOTES section 5); shared by the
MRML tests and the Slicer write benchmark."""

from __future__ import annotations

from types import SimpleNamespace


def scene_with_logics():
    import slicer

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    logics = {"Colors": app.GetColorLogic(), "Volumes": slicer.vtkSlicerVolumesLogic(),
              "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(), "Markups": slicer.vtkSlicerMarkupsLogic()}
    for name, logic in logics.items():
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, logic)
    slicer.mrmlScene = scene
    slicer.modules = SimpleNamespace(**{n.lower(): SimpleNamespace(logic=lambda l=l: l) for n, l in logics.items()})
    scene._keep = (app, logics)  # keep the logics alive as long as the scene
    return scene


def phantom_with_segment(scene):
    """An (8, 64, 64) ellipsoid CT volume node with 2.5 mm slices and a segmentation on its grid holding one
    empty segment 'organ': (volume node, segmentation node, segment id). Needs the tests' phantoms module."""
    import numpy as np
    import slicer
    from phantoms import ellipsoid_volume

    phantom = ellipsoid_volume((8, 64, 64), (4, 32, 32), (3, 14, 18))
    ct = slicer.util.addVolumeFromArray(phantom.array, np.diag([1.0, 1.0, 2.5, 1.0]), "ct")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    return ct, node, node.GetSegmentation().AddEmptySegment("organ")
