"""Slicer-side library of the MedVLSAM2Slicer module.

Qt-free at import: panel state, signals, shortcuts, connection and ``logic`` are pure Python; the MRML
adapters import ``slicer`` inside their functions, so they can be tested without the Slicer application.
Four files need Slicer and are imported only inside it: ``widget``, ``widget_language`` and
``widget_install`` (the panel) and ``selftest``.
"""
