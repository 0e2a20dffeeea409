"""Run by test_client_py39.py under Python 3.9 (Slicer 5.8's Python) with only numpy, httpx and zstandard:
the panel's remote path (serving decision, Connection, the torch-free client) against a running server.

    python3.9 py39_client.py IN.npz OUT_DIR      (server URL and token in MEDVLSAM2_URL / MEDVLSAM2_TOKEN)
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))


def main(inp: str, out_dir: str) -> None:
    import numpy as np

    from MedVLSAM2SlicerLib import dependencies, serving
    from MedVLSAM2SlicerLib.connection import Connection
    from medvlsam2.io.volume import Volume

    modes = {m.name: m.available for m in serving.server_modes(tuple(sys.version_info))}
    plan = serving.plan_start("remote", tuple(sys.version_info), os.environ["MEDVLSAM2_URL"])
    data = np.load(inp)
    volume = Volume(data["array"], tuple(data["spacing"]), tuple(data["origin"]))
    connection = Connection()
    connection.connect_remote(plan.remote_url, os.environ["MEDVLSAM2_TOKEN"])
    info = connection.device_info()
    session = connection.open_session(volume)
    try:
        obj = session.add_object("organ")
        session.add_points(obj, data["points"].tolist(), data["labels"].tolist())
        clicked = session.mask(obj).copy()
        session.propagate(obj)
        propagated = session.mask(obj).copy()
        answer = "".join(session.ask("Where is the lesion?"))
        session.undo(obj)
        undone = session.mask(obj)  # the remote session keeps no mask: this is the server's
    finally:
        session.close()
        connection.stop()
    heavy = sorted(m for m in ("torch", "sam2", "transformers", "qt", "slicer") if m in sys.modules)
    np.savez(Path(out_dir) / "masks.npz", clicked=clicked, propagated=propagated, undone=undone)
    (Path(out_dir) / "report.json").write_text(json.dumps({
        "python": list(sys.version_info[:3]), "modes": modes, "needs": list(plan.needs),
        "missing": dependencies.missing(plan.needs), "heavy": heavy, "device": info.device, "answer": answer}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
