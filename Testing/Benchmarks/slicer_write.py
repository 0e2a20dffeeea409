"""How long writing one click's changed box into a segment takes in Slicer's MRML (slicer-core, no application).

A click's result is a patch inside its changed box (one slice of an organ-sized box). The panel writes it
in place into the segment's internal labelmap (``MedVLSAM2SlicerLib.segments.write_patch``); the old path
read the whole segment into numpy, changed the box and rewrote the whole segment. Both are timed on a
512 x 512 volume of 100 and of 300 slices, next to Slicer's own save-state-for-undo of the same step, to
show what scales with the volume. Also timed: the fingerprint of the segment's state the panel takes after
each write (``segments.content_key``, only the written slices hashed again) and a whole one (what matching a
state restored by Slicer's undo costs). Prints a table and writes JSON.

    nice -n 10 python Testing/Benchmarks/slicer_write.py --out slicer_write.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))
sys.path.insert(0, str(ROOT / "Testing" / "Python"))
from slicer_scene import scene_with_logics  # noqa: E402


def full_rewrite(segmentation, segment_id, volume, bbox, patch) -> None:
    """The previous write path: whole segment to numpy, change the box, whole segment back."""
    import slicer

    from MedVLSAM2SlicerLib.segments import segment_array

    current = segment_array(segmentation, segment_id, volume)
    k0, k1, j0, j1, i0, i1 = bbox
    current[k0:k1, j0:j1, i0:i1] = patch
    slicer.util.updateSegmentBinaryLabelmapFromArray(current, segmentation, segment_id, volume)


def run(slices: int, repeats: int) -> dict:
    import slicer

    from MedVLSAM2SlicerLib import segments, undo

    scene = scene_with_logics()
    shape = (slices, 512, 512)
    volume = slicer.util.addVolumeFromArray(np.zeros(shape, np.int16), np.diag([0.7, 0.7, 1.0, 1.0]), "ct")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    seg = segmentation.GetSegmentation()
    organ, other = seg.AddEmptySegment("organ"), seg.AddEmptySegment("other")
    start = np.zeros(shape, np.uint8)
    start[20:80, 150:350, 150:350] = 1  # a liver-sized object across many slices
    slicer.util.updateSegmentBinaryLabelmapFromArray(start, segmentation, organ, volume)
    neighbour = np.zeros(shape, np.uint8)
    neighbour[30:60, 360:450, 100:200] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(neighbour, segmentation, other, volume)
    history = undo.SegmentationUndo(segmentation, undo.new_editor_logic(scene, segmentation))
    history.save()  # the first save copies every labelmap once; the timed saves copy the changed one

    rng = np.random.default_rng(0)
    times = {"in_place_ms": [], "in_place_no_undo_ms": [], "full_rewrite_ms": [], "save_for_undo_ms": [],
             "key_after_write_ms": [], "key_whole_ms": []}
    for n in range(repeats):  # the write alone
        k = 30 + n % 40
        patch = (rng.random((1, 220, 220)) < 0.5).astype(np.uint8)
        t = time.perf_counter()
        assert segments.write_patch(segmentation, organ, volume, (k, k + 1, 140, 360, 140, 360), patch)
        times["in_place_no_undo_ms"].append(1000 * (time.perf_counter() - t))
    extent = segmentation.GetBinaryLabelmapInternalRepresentation(organ).GetExtent()
    for n in range(repeats):  # the panel's path: save the undo state, then write the box in place
        k = 30 + n % 40
        bbox = (k, k + 1, 140, 360, 140, 360)  # one click: the changed box of one slice
        patch = (rng.random((1, 220, 220)) < 0.5).astype(np.uint8)
        t = time.perf_counter()
        history.save()
        times["save_for_undo_ms"].append(1000 * (time.perf_counter() - t))
        key = segments.content_key(segmentation, organ)
        t = time.perf_counter()
        assert segments.write_patch(segmentation, organ, volume, bbox, patch)
        times["in_place_ms"].append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        after = segments.content_key(segmentation, organ, key, (k, k + 1))
        times["key_after_write_ms"].append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        assert segments.content_key(segmentation, organ) == after  # the incremental key is the whole one
        times["key_whole_ms"].append(1000 * (time.perf_counter() - t))
    grown = segmentation.GetBinaryLabelmapInternalRepresentation(organ).GetExtent()
    for n in range(repeats):  # the old path, for comparison
        k = 30 + n % 40
        bbox = (k, k + 1, 140, 360, 140, 360)
        patch = (rng.random((1, 220, 220)) < 0.5).astype(np.uint8)
        t = time.perf_counter()
        full_rewrite(segmentation, organ, volume, bbox, patch)
        times["full_rewrite_ms"].append(1000 * (time.perf_counter() - t))
    check = segments.segment_array(segmentation, organ, volume)
    assert np.array_equal(check[k:k + 1, 140:360, 140:360], patch)
    assert np.array_equal(segments.segment_array(segmentation, other, volume), neighbour)
    scene.Clear(1)
    return {"slices": slices, "shape": list(shape), "repeats": repeats, "extent_before": list(extent),
            "extent_after_in_place": list(grown),
            **{name: round(statistics.median(v), 2) for name, v in times.items()},
            **{name.replace("_ms", "_max_ms"): round(max(v), 2) for name, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="slicer_write.json")
    args = parser.parse_args()
    import os

    rows = [run(s, args.repeats) for s in args.slices]
    load = os.getloadavg()[0]
    print(f"one click's box (1 x 220 x 220) into a segment of a 512 x 512 volume; medians of {args.repeats}; "
          f"load average {load:.1f}")
    print("| slices | in place, alone (ms) | in place after an undo save (ms) | Slicer save-for-undo (ms) "
          "| old full rewrite (ms) | state key after a write (ms) | whole state key (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['slices']} | {r['in_place_no_undo_ms']} (max {r['in_place_no_undo_max_ms']}) | "
              f"{r['in_place_ms']} (max {r['in_place_max_ms']}) | {r['save_for_undo_ms']} | {r['full_rewrite_ms']} | "
              f"{r['key_after_write_ms']} | {r['key_whole_ms']} |")
    if len(rows) >= 2:
        print(f"in place {rows[-1]['slices']}/{rows[0]['slices']} slices: "
              f"{rows[-1]['in_place_no_undo_ms'] / max(rows[0]['in_place_no_undo_ms'], 1e-6):.2f}x alone, "
              f"{rows[-1]['in_place_ms'] / max(rows[0]['in_place_ms'], 1e-6):.2f}x after a save; full rewrite: "
              f"{rows[-1]['full_rewrite_ms'] / max(rows[0]['full_rewrite_ms'], 1e-6):.2f}x")
    Path(args.out).write_text(json.dumps({"load_average": load, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
