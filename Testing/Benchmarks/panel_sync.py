"""What one hand-edit sync of the panel costs against a real server that keeps the masks (RemoteSession).

A segment written by a click is then painted by hand on one slice (as the Segment Editor does); the panel
sends the edited slices to the model as mask prompts. Timed from the edit to the session having the prompt,
with the number of ``mask()`` downloads (each a full-volume mask) counted, over ``--edits`` edits, plus
syncs without an edit; then the server forgets the session and the time the panel takes to give the new one
its segment (a 60-slice organ) is measured. ``--panel`` picks the MedVLSAM2Slicer folder (panel and engine) to measure, so an
older checkout can be compared. Prints a table and writes JSON.

    nice -n 10 python Testing/Benchmarks/panel_sync.py --panel MedVLSAM2Slicer --out panel_sync.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--panel", default=str(ROOT / "MedVLSAM2Slicer"), help="MedVLSAM2Slicer folder to measure")
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--out", default="panel_sync.json")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.path[:0] = [str(Path(args.panel).resolve()), str(ROOT / "Testing" / "Python")]
    import slicer

    from medvlsam2.client import Client
    from medvlsam2.server.launcher import launch_server
    from MedVLSAM2SlicerLib import geometry, segments, undo
    from MedVLSAM2SlicerLib.controller import Controller
    from MedVLSAM2SlicerLib.worker import ModelWorker
    from slicer_scene import scene_with_logics

    scene = scene_with_logics()
    shape = (args.slices, 512, 512)
    arr = np.full(shape, -100, np.int16)
    arr[20:80, 150:350, 150:350] = 60  # an organ-sized bright block
    ct = slicer.util.addVolumeFromArray(arr, np.diag([0.7, 0.7, 1.0, 1.0]), "ct")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    sid = node.GetSegmentation().AddEmptySegment("organ")
    server = launch_server(model="tiny", device="cpu", extra_args=["--seed", "0"])
    client, worker = Client(server.url, server.token, timeout=300), ModelWorker()
    session = client.open_session(geometry.volume_from_node(ct))
    downloads = []
    real_mask = session.mask
    session.mask = lambda obj: downloads.append(obj) or real_mask(obj)
    try:
        c = Controller(worker)
        c.attach(session, ct, node, undo.SegmentationUndo(node, undo.new_editor_logic(scene, node)))
        pending = []
        c.defer = pending.append
        c.add_points(sid, [[250, 250, 50]], [1])
        worker.wait_all(timeout=300)
        assert c.state.error == "", c.state.error

        def synced(change) -> float:
            change()
            t0 = time.perf_counter()
            while pending:
                pending.pop()()
            worker.wait_all(timeout=300)
            assert c.state.error == "", c.state.error
            return time.perf_counter() - t0

        quiet = [synced(lambda: node.GetSegmentation().GetSegment(sid).Modified()) for _ in range(args.edits)]
        quiet_downloads = len(downloads)
        edit_s = []
        for n in range(args.edits):
            painted = segments.segment_array(node, sid, ct)
            k = 30 + n
            painted[k, 200:260, 200:260] = 1 - painted[k, 200:260, 200:260]  # paint/erase a square on slice k
            edit_s.append(synced(lambda: slicer.util.updateSegmentBinaryLabelmapFromArray(painted, node, sid, ct)))
        reopen = {}
        if hasattr(Controller, "_reopened"):  # older panels do not re-create objects after SessionExpired
            block = segments.segment_array(node, sid, ct)
            block[20:80, 150:350, 150:350] = 1  # the organ painted over 60 slices (one more edit, not timed)
            synced(lambda: slicer.util.updateSegmentBinaryLabelmapFromArray(block, node, sid, ct))
            client.request("DELETE", f"/v1/sessions/{session.sid}")  # the server forgets it, as after its lease
            t0 = time.perf_counter()
            c.propagate(sid)  # fails with SessionExpired; the panel re-creates the object on the new session
            worker.wait_all(timeout=600)
            assert c.state.error == "" and session.reopened == 1, c.state.error
            reopen = {"reopen_s": round(time.perf_counter() - t0, 2),
                      "reopen_slices": len(segments.covered_slices(segments.segment_array(node, sid, ct)))}
        out = {"panel": str(Path(args.panel).resolve()), "shape": list(shape), "edits": args.edits, **reopen,
               "sync_without_edit_ms": round(1000 * statistics.median(quiet), 1),
               "mask_downloads_without_edit": quiet_downloads,
               "sync_with_edit_ms_median": round(1000 * statistics.median(edit_s), 1),
               "mask_downloads_per_edit": (len(downloads) - quiet_downloads) / args.edits,
               "mask_bytes_per_download": int(np.prod(shape))}
    finally:
        worker.stop()
        session.close()
        client.close()
        server.stop()
    for key, value in out.items():
        print(f"{key:32s} {value}")
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
