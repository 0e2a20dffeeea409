"""The draft report as a text node saved with the scene, and its Markdown export (the text is the engine's one
report writer's draft, ``Controller.draft_report``)."""

from __future__ import annotations

from pathlib import Path

REPORT_NODE_NAME = "MedVLSAM2 draft report"


def report_text_node(scene, create: bool = True):
    """The scene's report text node (first one named ``REPORT_NODE_NAME``), created when missing."""
    nodes = scene.GetNodesByClassByName("vtkMRMLTextNode", REPORT_NODE_NAME)
    node = nodes.GetItemAsObject(0) if nodes.GetNumberOfItems() else None
    if node is None and create:
        node = scene.AddNewNodeByClass("vtkMRMLTextNode", REPORT_NODE_NAME)
        # a storage node makes the report a .txt file next to the scene instead of an attribute in the .mrml
        node.SetForceCreateStorageNode(node.CreateStorageNodeAlways)
    return node


def set_report_text(node, text: str) -> None:
    node.SetText(text)


def save_markdown(text: str, path: str | Path) -> Path:
    """Write the report as the panel holds it (the engine's draft, ``medvlsam2.report.writer``, with the reader's
    edits) to ``path`` (``.md`` added when missing) and return the path."""
    path = Path(path)
    if path.suffix.lower() not in (".md", ".markdown"):
        path = path.with_suffix(".md")
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path
