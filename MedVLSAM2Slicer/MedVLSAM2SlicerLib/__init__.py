"""Slicer-side library of the MedVLSAM2Slicer module.

Qt-free at import: panel state, signals and shortcuts are pure Python; the MRML adapters import
``slicer`` inside their functions, so the panel logic can be tested without the Slicer application.
"""
