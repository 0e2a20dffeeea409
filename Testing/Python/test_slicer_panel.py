"""Qt-free panel logic of the Slicer module: enable rules, busy handling, shortcuts, signal, worker, settings."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

from MedVLSAM2SlicerLib import dependencies, segments, terminology  # noqa: E402
from medvlsam2.io import terminology as table  # noqa: E402
from MedVLSAM2SlicerLib.panel_state import CONTROLS, PanelState  # noqa: E402
from MedVLSAM2SlicerLib.settings import Settings  # noqa: E402
from MedVLSAM2SlicerLib.shortcuts import SHORTCUTS, button_label, strip_shortcut  # noqa: E402
from MedVLSAM2SlicerLib.signals import Signal  # noqa: E402
from MedVLSAM2SlicerLib.worker import Job, ModelWorker  # noqa: E402
from medvlsam2.errors import Cancelled, InputError  # noqa: E402

PROMPTS = ("pointButton", "boxButton", "lassoButton", "scribbleButton", "negativeButton")
NEEDS_OBJECT = ("propagateButton", "resetButton")


def ready_state(**extra) -> PanelState:
    state = PanelState()
    state.update(connection="connected", session_open=True, volume_selected=True, segmentation_selected=True,
                 segment_selected=True, **extra)
    return state


def test_nothing_model_related_is_enabled_before_connecting():
    state = PanelState()
    enabled = {c for c, on in state.enabled_map().items() if on}
    assert enabled == {"startServerButton"}
    assert "Not connected" in state.status_text()


def test_prompt_buttons_follow_connection_volume_and_segment():
    state = ready_state()
    assert all(state.enabled(c) for c in PROMPTS)
    assert not any(state.enabled(c) for c in NEEDS_OBJECT)  # nothing to correct, propagate or undo yet
    state.update(segment_has_object=True)
    assert all(state.enabled(c) for c in NEEDS_OBJECT)
    state.update(segment_selected=False)
    assert not any(state.enabled(c) for c in PROMPTS + NEEDS_OBJECT)
    state.update(segment_selected=True, connection="error")
    assert not state.ready and not any(state.enabled(c) for c in PROMPTS)
    assert state.enabled("startServerButton") and not state.enabled("stopServerButton")


def test_text_and_question_need_text():
    state = ready_state()
    assert not state.enabled("runTextButton") and not state.enabled("askButton")
    state.update(text_prompt="  \n", question=" ")
    assert not state.enabled("runTextButton") and not state.enabled("askButton")
    state.update(text_prompt="liver", question="Is the liver enlarged?", segment_selected=False)
    assert state.enabled("runTextButton")  # text prompts make their own segments
    assert state.enabled("askButton") and state.enabled("reportButton")
    assert not state.enabled("saveReportButton")
    state.update(report_text="Liver: normal.")
    assert state.enabled("saveReportButton") and state.enabled("copyReportButton")


def test_busy_blocks_every_model_action_and_only_the_right_stop_button_is_enabled():
    state = ready_state(segment_has_object=True, text_prompt="liver", question="why?")
    assert state.begin("propagate")
    assert not state.begin("points")  # one call at a time; nothing changed
    assert state.busy_job == "propagate"
    model_actions = PROMPTS + NEEDS_OBJECT + ("runTextButton", "askButton", "reportButton", "stopServerButton")
    assert not any(state.enabled(c) for c in model_actions)
    assert state.enabled("cancelButton") and not state.enabled("stopAnswerButton")
    state.set_progress(3, 10)
    assert state.status_text() == "Running propagate: 3/10"
    state.finish()
    assert all(state.enabled(c) for c in model_actions) and not state.enabled("cancelButton")
    assert state.begin("ask")
    assert state.enabled("stopAnswerButton") and not state.enabled("cancelButton")
    state.finish(error="server went away")
    assert state.status_text() == "Error: server went away" and not state.busy


def test_uncancellable_jobs_show_no_cancel_and_unknown_controls_are_errors():
    state = ready_state()
    state.begin("upload", cancellable=False)
    assert not state.enabled("cancelButton") and not state.enabled("stopAnswerButton")
    with pytest.raises(KeyError, match="unknown control"):
        state.enabled("noSuchButton")
    with pytest.raises(AttributeError):
        state.update(nonsense=1)
    with pytest.raises(ValueError):
        state.update(connection="maybe")


def test_changed_fires_once_per_update_and_cpu_warning_shows_on_cpu_only():
    state = ready_state()
    calls = []
    state.changed.connect(lambda: calls.append(1))
    state.update(text_prompt="a", question="b")
    assert len(calls) == 1
    state.set_device("cpu", None)
    assert "CPU" in state.cpu_warning()
    state.set_device("cuda:0 (NVIDIA H100)", 79.6)
    assert state.cpu_warning() == "" and state.status_text() == "Connected (cuda:0 (NVIDIA H100), 79.6 GB)"


def test_disconnecting_closes_the_session():
    state = ready_state()
    state.update(connection="disconnected")
    assert not state.session_open and not state.ready


def test_shortcut_map_is_unique_points_at_panel_buttons_and_leaves_slicers_keys_alone():
    from MedVLSAM2SlicerLib.shortcuts import RESERVED

    keys = [k for k, _ in SHORTCUTS.values()]
    buttons = [b for _, b in SHORTCUTS.values()]
    assert len(set(keys)) == len(keys) and len(set(buttons)) == len(buttons)
    assert set(buttons) <= set(CONTROLS)
    assert {a: SHORTCUTS[a][0] for a in ("point", "box", "lasso", "scribble", "toggle_sign")} == \
        {"point": "P", "box": "B", "lasso": "L", "scribble": "S", "toggle_sign": "T"}
    assert not set(keys) & set(RESERVED)  # Edit > Undo and Escape keep their meaning
    label = button_label("Box", "box")
    assert label == "Box (B)" and strip_shortcut(label) == "Box" and strip_shortcut("Box") == "Box"


def test_controls_a_model_cannot_serve_are_disabled_with_the_reason():
    state = ready_state(segment_has_object=True, text_prompt="liver", question="why?")
    assert state.enabled("runTextButton") and state.missing_capability("runTextButton") == ""  # not reported: all on
    state.set_device("cpu", None, ["interactive"])  # a MedSAM2 checkpoint
    assert all(state.enabled(c) for c in PROMPTS + NEEDS_OBJECT)
    assert not state.enabled("runTextButton") and "trained MedVL-SAM2 bundle" in state.missing_capability("runTextButton")
    assert all(name in state.missing_capability("runTextButton") for name in ("voxtell", "segvol", "m3d-lamed-phi3-4b"))
    from medvlsam2 import weights

    serving = {r["name"]: r["serves"] for r in weights.list_weights()}  # the hints name what the manifest serves
    assert all("typed prompts" in serving[n] for n in ("voxtell", "segvol", "m3d-lamed-phi3-4b"))
    assert "questions" in serving["m3d-lamed-phi3-4b"] and "m3d-lamed-phi3-4b" in state.missing_capability("askButton")
    assert not state.enabled("askButton") and "Med3DVLM" in state.missing_capability("reportButton")
    state.set_device("cuda:0", 80.0, ["language"])  # a Med3DVLM folder
    assert state.enabled("askButton") and not state.enabled("boxButton")
    assert "MedSAM2" in state.missing_capability("boxButton")
    assert state.enabled("nextSegmentButton")  # no model needed
    state.update(connection="disconnected")
    assert state.capabilities is None


def test_signal_calls_slots_in_order_and_disconnects():
    signal, seen = Signal(), []
    first, second = (lambda x: seen.append(("a", x))), (lambda x: seen.append(("b", x)))
    signal.connect(first)
    signal.connect(second)
    signal.connect(first)
    signal.emit(1)
    signal.disconnect(first)
    signal.emit(2)
    assert seen == [("a", 1), ("b", 1), ("b", 2)] and len(signal) == 1


def test_worker_runs_jobs_in_order_on_one_thread_and_delivers_on_the_caller():
    worker = ModelWorker()
    try:
        seen, threads = [], set()

        def run(n):
            def body(job):
                threads.add(threading.get_ident())
                job.progress(n, 3)
                job.emit(f"piece {n}")
                if n == 2:
                    raise ValueError("bad prompt")
                return n
            return body

        delivered_on = set()
        for n in range(3):
            worker.submit(Job(f"job{n}", run(n), on_done=lambda r: (seen.append(("done", r)), delivered_on.add(threading.get_ident())),
                              on_error=lambda e: seen.append(("error", str(e))),
                              on_partial=lambda p: seen.append(("partial", p)),
                              on_progress=lambda d, t: seen.append(("progress", d))))
        assert all(kind != "done" for kind, _ in seen)  # nothing runs on this thread until deliver()
        worker.wait_all(timeout=10)
        assert seen == [("progress", 0), ("partial", "piece 0"), ("done", 0),
                        ("progress", 1), ("partial", "piece 1"), ("done", 1),
                        ("progress", 2), ("partial", "piece 2"), ("error", "bad prompt")]
        assert len(threads) == 1 and threading.get_ident() not in threads
        assert delivered_on == {threading.get_ident()} and worker.idle
    finally:
        worker.stop()


def test_cancel_reaches_the_running_and_the_queued_jobs():
    worker = ModelWorker()
    try:
        started, errors, done = threading.Event(), [], []

        def slow(job):
            started.set()
            while True:
                job.cancel.raise_if_cancelled()
                threading.Event().wait(0.01)

        worker.submit(Job("slow", slow, on_error=errors.append))
        worker.submit(Job("queued", lambda job: "ran", on_done=done.append, on_error=errors.append))
        assert started.wait(10)
        worker.cancel_current()
        worker.wait_all(timeout=10)
        assert done == [] and len(errors) == 2 and all(isinstance(e, Cancelled) for e in errors)
    finally:
        worker.stop()


def test_settings_round_trip_and_never_store_secrets():
    store: dict = {}
    fake = SimpleNamespace(value=lambda k, d=None: store.get(k, d), setValue=store.__setitem__)
    settings = Settings(fake)
    assert settings.get("device") == "auto" and settings.get("consentedInstall") is False
    settings.set("remoteUrl", "https://gpu:8000")
    store["MedVLSAM2Slicer/consentedInstall"] = "true"  # how QSettings returns booleans on some platforms
    assert settings.get("remoteUrl") == "https://gpu:8000" and settings.get("consentedInstall") is True
    with pytest.raises(ValueError, match="secret"):
        settings.set("remoteToken", "abc")
    with pytest.raises(KeyError):
        settings.get("nope")
    assert not any("token" in k.lower() for k in store)


def test_the_dependency_check_reports_monai_missing_when_it_is(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "monai" else real(name, *a))
    assert "monai" in dependencies.missing(dependencies.SERVER_REQUIREMENTS)
    assert "monai>=1.4" in dependencies.consent_message(dependencies.missing(dependencies.SERVER_REQUIREMENTS))
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert dependencies.missing(dependencies.SERVER_REQUIREMENTS) == []  # this venv has the whole server


def test_prompt_lines_and_terminology_matching():
    assert segments.prompt_lines(" liver \n\nspleen\nliver\n") == ["liver", "spleen"]
    # without Slicer's terminology the panel takes the engine's table, entry for entry
    for name in ("the LEFT kidney", "kidneys", "cyst in the right kidney", "hepatic lesion"):
        entry, color = terminology.entry_and_color(name, 0)
        assert (f"TerminologyEntry:{entry}|", tuple(round(c * 255) for c in color)) == table.terminology(name)
    assert "~SCT^64033007^Kidney~SCT^7771000^Left~" in terminology.entry_and_color("the LEFT kidney", 0)[0]
    assert "~SCT^64033007^Kidney~^^~" in terminology.entry_and_color("kidneys", 0)[0]
    assert terminology.entry_and_color("liverish blob", 0)[0] is None  # whole words only
    assert terminology.entry_and_color("blob", 0)[1] != terminology.entry_and_color("blob", 1)[1]
    assert segments.segment_name_for("liver", "liver", 1) == "liver"
    assert segments.segment_name_for("both kidneys", "left kidney", 2) == "both kidneys: left kidney"
    # a result delivered against the checks ("Deliver anyway") or the model keeps the engine's mark
    assert segments.segment_name_for("cyst", "cyst (unverified)", 1) == "cyst (unverified)"
    assert segments.segment_name_for("kidney cyst", "cyst (unverified)", 1) == "kidney cyst (unverified)"
    assert segments.segment_name_for("both kidneys", "left kidney (forced)", 2) == "both kidneys: left kidney (forced)"


def test_connection_starts_the_local_server_connects_and_stops_it(monkeypatch, tmp_path):
    import types

    from MedVLSAM2SlicerLib.connection import Connection, ServerOptions
    from medvlsam2.errors import InputError

    calls = []

    class Server:
        url, token = "http://127.0.0.1:5123", "tok"

        def is_alive(self):
            return "stopped" not in calls

        def stop(self):
            calls.append("stopped")

        def last_log_lines(self, n):
            return ["line"] * n

    class Client:
        def __init__(self, url, token):
            calls.append(("client", url, token))

        def version(self):
            return {"device": "cuda:0", "memory_gb": 24.0, "api_version": 1}

        def open_session(self, volume):
            return ("session", volume)

        def close(self):
            calls.append("closed")

    launcher = types.ModuleType("medvlsam2.server.launcher")
    launcher.launch_server = lambda **kwargs: calls.append(("launch", kwargs)) or Server()
    client = types.ModuleType("medvlsam2.client")
    client.Client = Client
    monkeypatch.setitem(sys.modules, "medvlsam2.server.launcher", launcher)
    monkeypatch.setitem(sys.modules, "medvlsam2.client", client)

    conn = Connection()
    with pytest.raises(InputError, match="not connected"):
        conn.open_session("volume")
    monkeypatch.setenv("MEDVLSAM2_HOME", str(tmp_path))
    with pytest.raises(InputError, match="'sam2.1-hiera-tiny' are not on this computer"):
        conn.start_local(ServerOptions(model="sam2.1-hiera-tiny"))  # a manifest entry that is not installed
    with pytest.raises(InputError, match="cannot load 'nonsense'"):
        conn.start_local(ServerOptions(model="nonsense"))
    conn.start_local(ServerOptions(model="tiny", device="cpu", log_path=str(tmp_path / "server.log")))
    assert calls[0] == ("launch", {"python": sys.executable, "model": "tiny", "device": "cpu", "host": "127.0.0.1",
                                   "port": 0, "log_path": str(tmp_path / "server.log"), "ready_timeout": 300.0})
    assert calls[1] == ("client", "http://127.0.0.1:5123", "tok") and conn.connected
    assert conn.open_session("volume") == ("session", "volume")
    info = conn.device_info()
    assert (info.device, info.memory_gb, info.capabilities) == ("cuda:0", 24.0, None)  # an older server: not said
    assert conn.last_log_lines(2) == "line\nline"
    conn.stop()
    assert calls[-2:] == ["closed", "stopped"] and not conn.connected
    with pytest.raises(InputError, match="not connected"):
        conn.device_info()
    conn.start_local(ServerOptions(model="demo"))  # the shipped bundle folder, not the random "demo" config
    assert calls[-2][1]["model"] == str(ROOT / "Resources" / "DemoWeights")
    conn.stop()
    with pytest.raises(InputError, match="http://"):
        conn.connect_remote("gpu-host:8000", "secret")
    conn.connect_remote(" https://gpu-host:8000 ", "secret")
    assert calls[-1] == ("client", "https://gpu-host:8000", "secret")
    monkeypatch.setitem(sys.modules, "medvlsam2.client", None)  # an engine without the client
    with pytest.raises(InputError, match="update the MedVLSAM2Slicer extension"):
        conn.connect_remote("https://gpu-host:8000", "secret")


def test_model_list_shows_the_demo_bundle_released_weights_random_configs_and_other(monkeypatch, tmp_path):
    from medvlsam2 import resources, weights
    from MedVLSAM2SlicerLib import connection
    from MedVLSAM2SlicerLib.logic import MedVLSAM2Logic
    from MedVLSAM2SlicerLib.model_list import OTHER

    monkeypatch.setenv("MEDVLSAM2_HOME", str(tmp_path))
    names = list(weights.load_manifest())
    assert "medsam2-latest" in names
    choices = MedVLSAM2Logic.model_choices()
    values = [c.value for c in choices]
    assert values[0] == "demo" and values[-1] == OTHER and choices[-1].label == "Other file or folder..."
    assert set(names) <= set(values) and values.index("tiny") > max(values.index(n) for n in names)
    labels = {c.value: c.label for c in choices}
    assert labels["medsam2-latest"] == "medsam2-latest (download)"  # nothing installed yet; no published size
    assert labels["m3d-lamed-phi3-4b"] == "m3d-lamed-phi3-4b (download, 16.2 GB)"
    assert MedVLSAM2Logic.weights_ready("demo") and MedVLSAM2Logic.weights_ready("tiny")
    assert not MedVLSAM2Logic.weights_ready("medsam2-latest")
    # once installed, an entry moves up, loses "(download)" and is served by its name
    weights.weight_path("medsam2-latest").parent.mkdir(parents=True, exist_ok=True)
    weights.weight_path("medsam2-latest").write_bytes(b"x")
    choices = MedVLSAM2Logic.model_choices()
    assert choices[1][:2] == ("medsam2-latest", "medsam2-latest") and "(installed)" in choices[1].details and MedVLSAM2Logic.weights_ready("medsam2-latest")
    assert connection.model_spec("medsam2-latest") == "medsam2-latest"
    # a Hugging Face entry installs as a folder
    assert not MedVLSAM2Logic.weights_ready("med3dvlm-qwen2.5-7b")
    weights.weight_path("med3dvlm-qwen2.5-7b").mkdir(parents=True)
    assert MedVLSAM2Logic.weights_ready("med3dvlm-qwen2.5-7b") and connection.installed("med3dvlm-qwen2.5-7b")
    # files and folders the factory takes
    ckpt, recipe, text = tmp_path / "MedSAM2_latest.pt", tmp_path / "recipe.yaml", tmp_path / "notes.txt"
    for p in (ckpt, text):
        p.write_text("x")
    recipe.write_text("segmenter: MedSAM2_latest.pt\n")
    assert connection.model_spec(str(ckpt)) == str(ckpt) and connection.model_spec(str(recipe)) == str(recipe)
    demo = str(connection.demo_weights())
    assert connection.model_spec(demo) == demo and MedVLSAM2Logic.weights_ready(str(ckpt))
    # the engine's factory.describe refuses what it cannot load, before a server is started
    with pytest.raises(InputError, match="not a model file"):
        connection.model_spec(str(text))
    with pytest.raises(InputError, match="no config.json"):
        connection.model_spec(str(tmp_path))
    recipe.write_text("segmenter: MedSAM2_latest.pt\nmystery: 1\n")
    with pytest.raises(InputError, match="unknown key"):
        connection.model_spec(str(recipe))
    monkeypatch.setattr(resources, "SEARCH_DIRS", (tmp_path / "a", tmp_path / "b"))  # extension without demo weights
    assert MedVLSAM2Logic.model_choices()[0][0] != "demo" and not MedVLSAM2Logic.weights_ready("demo")


def test_each_model_says_its_size_licence_gpu_memory_and_what_it_serves_before_download(monkeypatch, tmp_path):
    from medvlsam2 import weights
    from MedVLSAM2SlicerLib import model_list

    monkeypatch.setenv("MEDVLSAM2_HOME", str(tmp_path))
    rows = {r["name"]: r for r in weights.list_weights()}
    details = {c.value: c.details for c in model_list.choices()}
    for name in ("m3d-lamed-phi3-4b", "segvol", "voxtell"):  # the weight manager's row, line by line
        row = rows[name]
        assert details[name].splitlines()[1:] == [f"Licence: {row['license']}", f"GPU memory: {row['gpu_memory']}",
                                                  "Serves: " + ", ".join(row["serves"])]
    assert details["m3d-lamed-phi3-4b"].splitlines()[0] == "m3d-lamed-phi3-4b (download: 16.2 GB)"
    assert details["segvol"].splitlines()[0] == "segvol (download: 724 MB)"
    assert "size not published" in details["voxtell"] and "GPU memory: not published" in details["medsam2-latest"]
    # no manifest row: factory.describe says what it is, reading no weights
    assert details["tiny"] == ("config 'tiny' with random weights\nWeights: random\nServes: segment from clicks or "
                               "boxes; answer questions or write reports; segment from a text prompt")
    assert details["demo"].startswith("MedVL-SAM2 demo weights") and "Weights: phantom-trained" in details["demo"]
    (tmp_path / "notes.txt").write_text("x")
    assert "not a model file" in model_list.spec_details(str(tmp_path / "notes.txt"))
    assert model_list.size_text(None) == "size not published" and model_list.size_text(5 * 10**5) == "1 MB"


def test_the_sessions_mask_is_the_last_state_its_steps_reached():
    from MedVLSAM2SlicerLib.undo import MAX_UNDO_STATES, Track

    empty = (None, ())
    t = Track.starting_at(7, empty)
    assert t.session_key() == empty  # a new object: empty mask, empty segment
    t.wrote(empty, "a")
    assert t.session_key() == "a"
    assert t.moved("edited") == 0 and not t.in_step and t.session_key() == "a"  # an outside edit: the session is at a
    t.steps[t.pos] = 2  # the edit was sent as two slice prompts
    assert t.session_key() == "edited"
    assert Track.starting_at(7, "painted before").session_key() is None  # voxels the session never saw
    assert Track.starting_at(7, "painted before", seeded=True).session_key() == "painted before"  # after a re-open
    # Slicer drops its oldest states: while the session's state is kept it is the answer, then it is unknown
    t = Track.starting_at(1, empty)
    t.wrote(empty, "s1")
    for n in range(MAX_UNDO_STATES):
        t.moved(f"edit {n}")
    assert t.keys[0] == "s1" and t.session_key() == "s1"
    t.moved("one more edit")
    assert "s1" not in t.keys and t.session_key() is None


def test_logic_runs_one_worker_even_when_slicer_calls_init_twice():
    from MedVLSAM2SlicerLib.logic import MedVLSAM2Logic

    logic = MedVLSAM2Logic()
    try:
        worker = logic.controller.worker
        MedVLSAM2Logic.__init__(logic)  # Slicer's base class runs it again through super(): same worker
        assert logic.controller.worker is worker
        assert len([t for t in threading.enumerate() if t.name == "MedVLSAM2-model"]) <= 1
    finally:
        logic.shutdown()
