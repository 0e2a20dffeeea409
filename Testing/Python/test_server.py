"""The inference server as a real child process on 127.0.0.1 (tiny model, CPU, seed 0), driven by the
torch-free client and by raw HTTP. Masks are compared with an in-process Session on the same weights.

The server starts once per module; the last test kills it mid-propagation on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # server child and this process: no oversubscription on shared cores

from medvlsam2 import protocol as P  # noqa: E402
from medvlsam2.client import Client  # noqa: E402
from medvlsam2.errors import Cancelled, CapabilityError, InputError, UnknownObjectError  # noqa: E402
from medvlsam2.io.volume import Volume  # noqa: E402
from medvlsam2.server.launcher import ServerStartError, launch_server  # noqa: E402
from medvlsam2.utils.cancel import CancelToken  # noqa: E402

LEASE_S = 6.0  # idle: no real call
LIVENESS_S = 3.0  # no heartbeat either
MAX_UPLOAD_MB = 1.0


def phantom(seed: int, shape=(8, 64, 64)) -> Volume:
    """A bright ellipsoid in noisy soft tissue (HU-like int16)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[:shape[0], :shape[1], :shape[2]]
    c = np.array(shape) / 2 + rng.uniform(-3, 3, 3)
    inside = ((k - c[0]) / (shape[0] / 2.5)) ** 2 + ((j - c[1]) / 14) ** 2 + ((i - c[2]) / 18) ** 2 <= 1
    arr = rng.normal(40, 15, shape) + 200 * inside
    return Volume(arr.astype(np.int16), (0.8, 0.8, 2.5), (-20.0, 10.0, 5.0))


@pytest.fixture(scope="module")
def server():
    srv = launch_server(model="tiny", device="cpu", extra_args=["--seed", "0", "--lease-s", str(LEASE_S),
                                                                 "--liveness-s", str(LIVENESS_S),
                                                                 "--max-upload-mb", str(MAX_UPLOAD_MB)])
    yield srv
    srv.stop()
    assert not srv.is_alive()


@pytest.fixture(scope="module")
def model():
    import torch

    from medvlsam2.factory import load_model

    torch.manual_seed(0)  # the same random weights as the server's --seed 0
    return load_model("tiny")


@pytest.fixture
def client(server):
    c = Client(server.url, server.token, timeout=60)
    yield c
    c.close()


def _auth(server) -> dict:
    return {"Authorization": f"Bearer {server.token}"}


def _health(server) -> dict:
    r = httpx.get(server.url + "/v1/health", headers=_auth(server))
    assert r.status_code == 200
    return r.json()


# ----- round trip ---------------------------------------------------------------------------------
def test_round_trip_matches_in_process_session(client, model):
    from medvlsam2.session import Session

    vol = phantom(0)
    local = Session(model, vol)
    remote = client.open_session(vol)
    assert client.version()["api_version"] == P.API_VERSION and client.version()["device"] == "cpu"
    try:
        lo, ro = local.add_object("liver"), remote.add_object("liver")
        assert lo == ro and remote.objects() == local.objects()
        for step in (lambda s, o: s.add_points(o, [[32, 32, 4], [10, 10, 4]], [1, -1]),
                     lambda s, o: s.add_box(o, (20, 20, 44, 44), k=2)):
            lr, rr = step(local, lo), step(remote, ro)
            assert rr.bbox == lr.bbox and np.array_equal(rr.patch, lr.patch)
            assert np.array_equal(remote.mask(ro), local.mask(lo))
        seen = []
        lr = local.propagate(lo)
        rr = remote.propagate(ro, progress=lambda d, n: seen.append((d, n)))
        assert seen and seen[-1][0] == seen[-1][1] == vol.shape[0]
        assert rr.bbox == lr.bbox and rr.scores.keys() == lr.scores.keys()
        assert np.array_equal(remote.mask(ro), local.mask(lo)) and remote.mask(ro).any()
        assert np.array_equal(remote.mask(ro), local.mask(lo))  # the server agrees with the local copy

        question = "Where is the lesion?"
        stream = remote.ask(question)
        first = next(stream)  # tokens arrive one by one
        assert [first, *stream] == list(local.ask(question))
        # tiny has no region input: a question about the object is refused alike, locally and over the wire
        with pytest.raises(CapabilityError):
            list(local.ask(question, {"object": lo}))
        with pytest.raises(CapabilityError):
            list(remote.ask(question, {"object": ro}))
        assert "".join(remote.report()) == "".join(local.report())

        local.undo(lo)
        remote.undo(ro)
        assert np.array_equal(remote.mask(ro), local.mask(lo))
        assert np.array_equal(remote.mask(ro), local.mask(lo))
        local.redo(lo)
        remote.redo(ro)
        assert np.array_equal(remote.mask(ro), local.mask(lo)) and np.array_equal(remote.mask(ro), local.mask(lo))
        local.undo(lo)
        remote.undo(ro)

        text_l, text_r = local.segment_text("segment the liver"), remote.segment_text("segment the liver")
        assert text_r.not_found == text_l.not_found
        forced_l, forced_r = local.segment_text("spleen", force=True), remote.segment_text("spleen", force=True)
        assert [(r.name, r.warnings) for r in forced_r.found] == [(r.name, r.warnings) for r in forced_l.found]
        assert forced_r.found and all(r.name.endswith(("(forced)", "(unverified)")) for r in forced_r.found)
        for r in forced_l.found:
            local.remove(r.object_id)
            remote.remove(r.object_id)
        texts_l, texts_r = text_l.found, text_r.found
        assert [(r.object_id, r.name, r.bbox) for r in texts_r] == [(r.object_id, r.name, r.bbox) for r in texts_l]
        for r in texts_l:
            assert np.array_equal(remote.mask(r.object_id), local.mask(r.object_id))
        remote.reset(ro)
        assert not remote.mask(ro).any() and not remote.mask(ro).any()
        remote.remove(ro)
        assert ro not in remote.objects()
        with pytest.raises(UnknownObjectError):
            remote.undo(ro)
    finally:
        remote.close()


def test_reconnect_with_same_content_does_not_upload_again(client):
    vol = phantom(5)
    a = client.open_session(vol)
    b = client.open_session(vol)
    assert client.uploads == 1 and a.sid != b.sid
    a.close()
    b.close()


def test_cancelled_propagation_keeps_previous_mask(client):
    vol = phantom(1, shape=(16, 64, 64))
    s = client.open_session(vol)
    try:
        o = s.add_object()
        s.add_points(o, [[32, 32, 8]], [1])
        before = s.mask(o)
        token = CancelToken()
        with pytest.raises(Cancelled):
            s.propagate(o, cancel=token, progress=lambda d, n: token.cancel())
        assert np.array_equal(s.mask(o), before) and np.array_equal(s.mask(o), before)
        # a client that drops a propagation stream after the first progress line must not leave the
        # session locked: the next call (with a short timeout) goes through
        with httpx.stream("POST", f"{client.url}/v1/sessions/{s.sid}/objects/{o}/propagate", json={},
                          headers={"Authorization": client._http.headers["Authorization"]}, timeout=30) as r:
            assert r.status_code == 200
            assert "progress" in json.loads(next(r.iter_lines()))
        quick = Client(client.url, client._http.headers["Authorization"].split()[1], timeout=30)
        assert quick.request("GET", f"/v1/sessions/{s.sid}/objects")["objects"] == {str(o): "Segment_1"}
        quick.close()
        s.propagate(o)  # the session still works afterwards
        assert s.mask(o).sum() >= before.sum()
    finally:
        s.close()


def test_cancelled_ask_stops_the_stream_and_the_session_goes_on(client):
    s = client.open_session(phantom(6))
    try:
        token = CancelToken()
        stream = s.ask("Describe the liver.", cancel=token)
        assert isinstance(next(stream), str)
        token.cancel()
        with pytest.raises(Cancelled):
            for _ in stream:
                pass
        assert s.add_object() == 1  # the session is free again
    finally:
        s.close()


def test_serve_token_sources(tmp_path, monkeypatch):
    import argparse
    import stat

    from medvlsam2.cli.serve import TOKEN_ENV, _token

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = tmp_path / "token"
    made, generated = _token(argparse.Namespace(token_file=str(path), token=None))
    assert len(made) >= 32 and not generated and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _token(argparse.Namespace(token_file=str(path), token="other"))[0] == made  # the file wins, reused
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert _token(argparse.Namespace(token_file=None, token="argv")) == ("from-env", False)
    monkeypatch.delenv(TOKEN_ENV)
    fresh, generated = _token(argparse.Namespace(token_file=None, token=None))
    assert generated and fresh != made


# ----- security and validation ----------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
@pytest.mark.parametrize("method, path", [("GET", "/v1/health"), ("GET", "/v1/version"), ("POST", "/v1/sessions"),
                                          ("POST", "/v1/volumes")])
def test_missing_or_wrong_token_is_401(server, headers, method, path):
    r = httpx.request(method, server.url + path, headers=headers, content=b"{}")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert "bearer token" in r.json()["error"]["message"]


def _raw_request(server, head: str, body: bytes = b"", read_timeout: float = 20.0) -> tuple[int, bytes, float]:
    """Send ``head`` + part of a body over a plain socket; return (status, response bytes, seconds)."""
    u = urlparse(server.url)
    t0 = time.perf_counter()
    with socket.create_connection((u.hostname, u.port), timeout=read_timeout) as s:
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + 10:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data, time.perf_counter() - t0


def test_too_large_upload_is_413_before_the_body_is_read(server):
    big = 50 * 2 ** 20  # 50 MiB announced, only 4 KiB sent: the answer cannot wait for the body
    head = (f"POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {big}\r\n\r\n")
    status, data, seconds = _raw_request(server, head, b"\0" * 4096)
    assert status == 413 and b"too_large" in data and seconds < 10

    def chunks():  # no Content-Length: the server counts the streamed bytes
        for _ in range(64):
            yield b"\1" * 65536
    try:
        r = httpx.post(server.url + "/v1/volumes", content=chunks(), headers=_auth(server))
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server may close before the client finished writing; it must still be healthy
    assert _health(server)["status"] == "ok"


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(client, server):
    h = _auth(server)
    url = server.url
    vol = phantom(2)
    s = client.open_session(vol)
    try:
        o = s.add_object()
        base = f"{url}/v1/sessions/{s.sid}"
        cases = [
            ("POST", f"{base}/objects/{o}/points", b"{not json", 400, "not valid JSON"),
            ("POST", f"{base}/objects/{o}/points", b'{"points": [[NaN, 3, 2]], "labels": [1]}', 400, "finite"),
            ("POST", f"{base}/objects/{o}/points", b'{"points": [[1e9, 3, 2]], "labels": [1]}', 400, "outside the volume"),
            ("POST", f"{base}/objects/{o}/box", b'{"box": [5, 5, 1, 1], "k": 2}', 400, "empty"),
            ("POST", f"{base}/objects/{o}/box", b'{"box": [1, 1, 5, 5], "k": -3}', 400, "non-negative"),
            ("POST", f"{base}/objects/{o}/propagate", b'{"k_range": [5, 2]}', 400, "slice range"),
            ("POST", f"{base}/objects/{o}/propagate", b'{"k_range": [-2, 2]}', 400, "slice range"),
            ("POST", f"{base}/objects/-4/undo", b"", 400, "start at 1"),
            ("POST", f"{base}/objects/99/undo", b"", 404, "unknown object"),
            ("POST", f"{url}/v1/sessions/nosuchsession/objects", b"{}", 404, "unknown session"),
            ("POST", f"{url}/v1/sessions", b'{"volume_id": "%s"}' % (b"0" * 64), 404, "upload it first"),
            ("POST", f"{base}/ask", b'{"question": ""}', 400, "non-empty"),
            ("GET", f"{url}/v1/nothing", b"", 404, "not a route"),
        ]
        arr = np.zeros((2, 3, 4), np.complex64)
        header = json.dumps({"dtype": "complex64", "shape": [2, 3, 4], "spacing": [1, 1, 1], "origin": [0, 0, 0],
                             "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}).encode()
        cases.append(("POST", f"{url}/v1/volumes", P.MAGIC + len(header).to_bytes(4, "little") + header + arr.tobytes(),
                      400, "not supported"))
        neg = header.replace(b"[2, 3, 4]", b"[2, -3, 4]").replace(b"complex64", b"int16")
        cases.append(("POST", f"{url}/v1/volumes", P.MAGIC + len(neg).to_bytes(4, "little") + neg, 400, "positive"))
        for method, target, body, status, words in cases:
            r = httpx.request(method, target, content=body, headers=h)
            assert r.status_code == status, (target, r.text)
            text = r.text.strip().splitlines()[-1]  # a stream reports its error on its last line
            err = json.loads(text)["error"]
            assert err["code"] and words in err["message"], (target, err)
        assert _health(server)["status"] == "ok"
        s.add_points(o, [[32, 32, 4]], [1])  # the session is intact
        with pytest.raises(InputError, match="outside"):
            s.add_points(o, [[-1, 3, 3]], [1])  # the client raises the engine's error class
    finally:
        s.close()


def test_client_killed_mid_upload_leaves_server_healthy(server, client):
    _, body = P.pack_volume(phantom(3).array, (1, 1, 1), (0, 0, 0), np.eye(3))
    u = urlparse(server.url)
    head = (f"POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    for _ in range(3):
        with socket.create_connection((u.hostname, u.port)) as s:
            s.sendall(head + body[: len(body) // 2])  # then vanish
    h = _health(server)
    assert h["status"] == "ok"
    sess = client.open_session(phantom(3))  # a complete upload of the same volume still works
    sess.add_object()
    sess.close()


def test_two_concurrent_clients_get_correct_masks(server, model):
    from medvlsam2.session import Session

    vols = [phantom(10), phantom(11)]
    out: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            c = Client(server.url, server.token)
            s = c.open_session(vols[n])
            o = s.add_object()
            s.add_points(o, [[32, 30 + n, 4]], [1])
            s.propagate(o)
            out[n] = s.mask(o)
            assert np.array_equal(s.mask(o), out[n])
            s.close()
            c.close()
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for n in range(2):
        ref = Session(model, vols[n])
        o = ref.add_object()
        ref.add_points(o, [[32, 30 + n, 4]], [1])
        ref.propagate(o)
        assert np.array_equal(out[n], ref.mask(o)), n


def test_a_long_answer_does_not_block_another_session(server):
    """Each answer token is one model call, so B's click runs between A's tokens.

    B clicks once before A starts, so B's measured click reuses its cached slice features and costs one
    short model call; A's answer is 48 model calls (the tiny config's max_new_tokens). On two busy cores
    A's 48 short calls can occasionally all run while B's request is in flight, so the race gets three
    tries; a server that queued B behind A's whole answer fails all three."""
    a_client, b_client = Client(server.url, server.token), Client(server.url, server.token)
    a, b = a_client.open_session(phantom(40)), b_client.open_session(phantom(41))
    try:
        ob = b.add_object()
        b.add_points(ob, [[30, 32, 4]], [1])
        outcomes = []
        for attempt in range(3):
            finished: dict[str, float] = {}
            stream = a.report()
            next(stream)  # A's report is under way
            pieces: list[str] = []

            def read_rest() -> None:
                for piece in stream:
                    pieces.append(piece)
                finished["a"] = time.perf_counter()

            t = threading.Thread(target=read_rest)
            t.start()
            b.add_points(ob, [[32 + attempt, 32, 4]], [1])
            finished["b"], a_pieces_then = time.perf_counter(), len(pieces)
            t.join(120)
            assert len(pieces) >= 5, "the report was too short to tell"
            outcomes.append(a_pieces_then < len(pieces) and finished["b"] < finished["a"])
            if outcomes[-1]:
                break
        assert any(outcomes), f"B's click waited for A's whole answer in every try ({outcomes})"
    finally:
        for s, c in ((a, a_client), (b, b_client)):
            s.close()
            c.close()


def test_lease_expiry_frees_memory_and_client_recovers(server, model):
    from medvlsam2.session import Session

    vol = phantom(20, shape=(16, 128, 128))
    ref = Session(model, vol)  # the expected masks, computed first: the idle session below must not wait on it
    ro = ref.add_object()
    ref.add_points(ro, [[64, 64, 8]], [1])
    ref.propagate(ro)
    propagated = ref.mask(ro)
    c = Client(server.url, server.token, heartbeat=False)  # an idle client that stopped sending heartbeats
    before = _health(server)
    kept = np.zeros(vol.shape, np.uint8)  # the caller's own mask (the panel's labelmap): results land only here
    s = c.open_session(vol, on_result=lambda r: r.apply_to(kept))
    o = s.add_object()
    s.add_points(o, [[64, 64, 8]], [1])
    s.propagate(o)
    held = _health(server)
    assert held["sessions"] == before["sessions"] + 1
    assert held["held_bytes"] - before["held_bytes"] >= vol.array.nbytes + 16 * 128 * 128  # volume + mask at least
    deadline = time.time() + LEASE_S + 15
    while time.time() < deadline and (_health(server)["sessions"] > before["sessions"]
                                      or _health(server)["held_bytes"] > before["held_bytes"]):
        time.sleep(0.5)  # the session goes after LIVENESS_S (no heartbeats), its unused volume after LEASE_S
    after = _health(server)
    assert after["sessions"] == before["sessions"] and after["expired_sessions"] > before["expired_sessions"]
    assert after["live_engine_sessions"] == before["live_engine_sessions"]  # the engine Session was garbage-collected
    assert after["held_bytes"] <= before["held_bytes"]
    # the next call says so at once, after opening a new session (re-uploading): nothing is replayed behind the
    # caller's back, and the caller's mask is kept as it was
    with pytest.raises(P.SessionExpired, match="a new session is open: your masks are kept"):
        s.add_points(o, [[70, 60, 8]], [-1])
    assert s.reopened == 1 and c.uploads == 2 and s.objects() == {}
    assert np.array_equal(kept, propagated) and kept.any()
    o2 = s.add_object()  # the new session works at once
    r = s.add_points(o2, [[64, 64, 8]], [1])
    fresh = Session(model, vol)
    fo = fresh.add_object()
    fresh.add_points(fo, [[64, 64, 8]], [1])
    assert r.object_id == o2 and np.array_equal(s.mask(o2), fresh.mask(fo)) and s.mask(o2).any()
    s.close()
    c.close()


def _alive(server, sid: str) -> bool:
    """Whether the server still knows ``sid`` (a cancel probe: it refreshes liveness, never the idle clock)."""
    r = httpx.post(f"{server.url}/v1/sessions/{sid}/cancel", headers=_auth(server))
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def test_heartbeats_prove_liveness_but_do_not_extend_the_idle_lease(server):
    beating, silent = Client(server.url, server.token), Client(server.url, server.token, heartbeat=False)
    vol = phantom(50)
    a, b = beating.open_session(vol), silent.open_session(vol)
    assert (a.lease_s, a.liveness_s) == (LEASE_S, LIVENESS_S)
    t0 = time.monotonic()
    time.sleep(LIVENESS_S + 1.5)  # past liveness: only the session whose client beats is left
    assert _alive(server, a.sid) and not _alive(server, b.sid)
    while time.monotonic() - t0 < LEASE_S + 6 and _alive(server, a.sid):
        time.sleep(0.5)
    assert not _alive(server, a.sid), "heartbeats alone kept a session past its idle lease"
    assert time.monotonic() - t0 >= LEASE_S
    with pytest.raises(P.SessionExpired):  # a real call afterwards says so, with a new session open
        a.add_object()
    assert a.reopened == 1 and a.add_object() == 1
    for s, c in ((a, beating), (b, silent)):
        s.close()
        c.close()


def test_session_is_a_context_manager_and_close_really_closes(server, client):
    before = _health(server)["sessions"]
    with client.open_session(phantom(51)) as s:
        s.add_object()
        assert _health(server)["sessions"] == before + 1
    assert _health(server)["sessions"] == before and s.closed and not _alive(server, s.sid)
    s.close()  # a second close does nothing
    with pytest.raises(InputError, match="closed"):
        s.add_object()  # never re-opens a session behind the caller's back
    assert _health(server)["sessions"] == before


def test_frozen_server_stream_times_out_like_a_dead_one(server):
    """A server that stops sending (SIGSTOP: alive but frozen) is treated as gone after stream_silence_s."""
    c = Client(server.url, server.token, stream_silence_s=2.0, heartbeat=False)
    s = c.open_session(phantom(52, shape=(16, 64, 64)))
    o = s.add_object()
    s.add_points(o, [[32, 32, 8]], [1])
    before = s.mask(o)

    def freeze(done: int, total: int) -> None:
        os.kill(server.pid, signal.SIGSTOP)

    try:
        with pytest.raises(P.ServerUnavailable, match="sent nothing for 2 s") as info:
            s.propagate(o, progress=freeze)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert "previous result is kept" in str(info.value) and np.array_equal(s.mask(o), before)
    assert _health(server)["status"] == "ok"
    s.propagate(o)  # the same session goes on once the server answers again
    assert np.array_equal(s.mask(o), s.mask(o))
    s.close()
    c.close()


def test_api_version_mismatch_is_refused(client, monkeypatch):
    monkeypatch.setattr(P, "API_VERSION", P.API_VERSION + 1)
    with pytest.raises(P.APIVersionMismatch, match="update the server"):
        client.version()


def test_launcher_reports_a_bad_python():
    with pytest.raises(ServerStartError, match="cannot start the server"):
        launch_server(python="/nonexistent/python", ready_timeout=5)


# ----- keep last: it kills the module's server ------------------------------------------------------
def test_server_killed_mid_propagation(server, client):
    vol = phantom(30, shape=(16, 64, 64))
    kept = np.zeros(vol.shape, np.uint8)  # the caller's mask: the client holds none
    s = client.open_session(vol, on_result=lambda r: r.apply_to(kept))
    o = s.add_object()
    s.add_points(o, [[32, 32, 8]], [1])
    before = s.mask(o)
    assert np.array_equal(kept, before)

    def kill(done: int, total: int) -> None:
        if server.is_alive():
            os.kill(server.pid, signal.SIGKILL)
            server.proc.wait(10)

    with pytest.raises(P.ServerUnavailable, match="stopped answering|closed the stream") as info:
        s.propagate(o, progress=kill)
    assert "previous result is kept" in str(info.value)
    assert np.array_equal(kept, before)
    assert not server.is_alive()
    assert any("medvlsam2 server on" in line for line in server.last_log_lines(500))
    with pytest.raises(P.ServerUnavailable, match="cannot reach"):
        Client(server.url, server.token, retries=1, backoff_s=0.01).health()
