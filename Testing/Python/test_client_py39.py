"""The panel's client-only path on Python 3.9 (Slicer 5.6 / 5.8): a 3.9 interpreter with numpy, httpx and
zstandard only drives a real server (started from this environment) through Connection and the torch-free
client; its masks and answer must equal an in-process Session on the same weights.

The 3.9 interpreter: $MEDVLSAM2_PY39, else .venv-py39/bin/python (``.ci/run`` makes it where a Python 3.9
exists); without one the test is skipped and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from phantoms import ellipsoid_volume

ROOT = Path(__file__).resolve().parents[2]
PY39 = os.environ.get("MEDVLSAM2_PY39") or str(ROOT / ".venv-py39" / "bin" / "python")
POINTS, LABELS = [[32, 30, 4], [6, 6, 4]], [1, -1]

pytestmark = pytest.mark.skipif(not Path(PY39).is_file(),
                                reason=f"no Python 3.9 at {PY39} (set MEDVLSAM2_PY39 or run .ci/run)")


def test_the_client_path_runs_on_python_3_9_and_matches_the_in_process_session(tmp_path):
    import torch

    from medvlsam2.factory import load_model
    from medvlsam2.server.launcher import launch_server
    from medvlsam2.session import Session

    volume = ellipsoid_volume((8, 64, 64), (4, 32, 32), (3, 14, 18), spacing=(0.8, 0.8, 2.5))
    np.savez(tmp_path / "in.npz", array=volume.array, spacing=volume.spacing, origin=volume.origin,
             points=np.array(POINTS), labels=np.array(LABELS))
    server = launch_server(model="tiny", device="cpu", extra_args=["--seed", "0"])
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(MEDVLSAM2_URL=server.url, MEDVLSAM2_TOKEN=server.token, NO_PROXY="127.0.0.1,localhost")
        run = subprocess.run([PY39, str(ROOT / "Testing" / "Python" / "py39_client.py"), str(tmp_path / "in.npz"),
                              str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    finally:
        server.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["python"][:2] == [3, 9]
    assert report["modes"] == {"remote": True, "local": False}  # what the panel offers on Slicer 5.8
    assert report["missing"] == [] and report["heavy"] == []  # the client alone, nothing of torch/Qt imported

    torch.manual_seed(0)  # the server's --seed 0 weights
    local = Session(load_model("tiny"), volume)
    obj = local.add_object("organ")
    local.add_points(obj, POINTS, LABELS)
    masks = np.load(tmp_path / "masks.npz")
    assert np.array_equal(masks["clicked"], local.mask(obj)) and masks["clicked"].any()
    local.propagate(obj)
    assert np.array_equal(masks["propagated"], local.mask(obj))
    assert report["answer"] == "".join(local.ask("Where is the lesion?"))
    local.undo(obj)
    assert np.array_equal(masks["undone"], local.mask(obj))
