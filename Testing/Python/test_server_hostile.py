"""Hostile input against a real ``medvlsam2 serve`` process on 127.0.0.1 (tiny model, CPU, small limits).

One server for the module. Every bad request must get a 4xx (or the documented 503) JSON error with a
message, the server's RSS is sampled during the whole module (peak within 100 MB of idle), health must
answer while a propagation runs with 50 requests queued behind it, and the log must hold no
traceback and none of the text the requests carried.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import zstandard

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from medvlsam2 import protocol as P  # noqa: E402
from medvlsam2.client import Client  # noqa: E402
from medvlsam2.io.volume import Volume  # noqa: E402
from medvlsam2.server.launcher import launch_server  # noqa: E402

MARKER = "PHIMARKER7Q"  # carried by requests; must never reach the log
LIMITS = {"--max-upload-mb": "2", "--max-voxels": "4000000", "--max-json-kb": "64", "--max-points": "16",
          "--max-prompt-chars": "200", "--max-sessions": "6", "--request-timeout-s": "2", "--lease-s": "120",
          "--liveness-s": "60"}


def phantom(seed: int, shape=(8, 64, 64)) -> Volume:
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[:shape[0], :shape[1], :shape[2]]
    inside = ((k - shape[0] / 2) / (shape[0] / 2.5)) ** 2 + ((j - 32) / 14) ** 2 + ((i - 32) / 18) ** 2 <= 1
    return Volume((rng.normal(40, 15, shape) + 200 * inside).astype(np.int16), (0.8, 0.8, 2.5))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.peak = max(self.peak, _rss(self.pid))
            except (OSError, StopIteration):
                return


@pytest.fixture(scope="module")
def server():
    srv = launch_server(model="tiny", device="cpu", extra_args=["--seed", "0", *sum(LIMITS.items(), ())])
    time.sleep(1.0)
    idle = _rss(srv.pid)
    sampler = RssSampler(srv.pid)
    sampler.start()
    srv.rss_idle, srv.sampler = idle, sampler
    yield srv
    sampler.stop.set()
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = Client(server.url, server.token, timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def sess(client):
    """A session with object 1 holding a click, for the prompt routes."""
    s = client.open_session(phantom(1))
    s.add_object("target")
    s.add_points(1, [[32, 32, 4]], [1])
    yield s
    s.close()


def _auth(server) -> dict:
    return {"Authorization": f"Bearer {server.token}"}


# ----- bodies --------------------------------------------------------------------------------------
def _volume_body(payload: bytes | None = None, dtype: str = "int16", shape=(8, 64, 64), **geometry) -> bytes:
    header = {"dtype": dtype, "shape": list(shape), "spacing": [1.0, 1.0, 2.0], "origin": [0.0, 0.0, 0.0],
              "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], **geometry}
    raw = json.dumps(header).encode()
    if payload is None:
        payload = zstandard.ZstdCompressor().compress(np.zeros(shape, dtype).tobytes())
    return P.MAGIC + len(raw).to_bytes(4, "little") + raw + payload


def _raw_header(header: str) -> bytes:
    """A volume upload whose header is given as JSON text (for NaN and other non-JSON-able values)."""
    raw = header.encode()
    return P.MAGIC + len(raw).to_bytes(4, "little") + raw + zstandard.ZstdCompressor().compress(bytes(8 * 64 * 64 * 2))


def _frame_declaring(size: int) -> bytes:
    """A zstd frame whose header declares ``size`` bytes of content but holds one empty raw block."""
    return (0xFD2FB528).to_bytes(4, "little") + bytes([0xE0]) + size.to_bytes(8, "little") + b"\x01\x00\x00"


def _bomb() -> bytes:
    """64 MiB of zeros in a frame that does not declare its size (a few KB on the wire)."""
    obj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    return obj.compress(bytes(64 << 20)) + obj.flush()


def _wide_window() -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=27, write_content_size=False)
    obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return obj.compress(bytes(8 * 64 * 64 * 2)) + obj.flush()


def _points(pts, labels=None, **extra) -> bytes:
    return json.dumps({"points": pts, "labels": labels if labels is not None else [1] * len(pts), **extra}).encode()


EYE = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
GOOD = zstandard.ZstdCompressor().compress(bytes(8 * 64 * 64 * 2))
VOL, SESS, OBJ = "/v1/volumes", "/v1/sessions", "/v1/sessions/{sid}/objects/1"

# (id, method, path, body, status, words in the message)
CASES = [
    # resource exhaustion: uploads
    ("zstd bomb without declared size", "POST", VOL, lambda: _volume_body(_bomb()), 400, "decompresses to more than"),
    ("zstd frame declaring 1 TiB", "POST", VOL, lambda: _volume_body(_frame_declaring(1 << 40)), 400, "declares 1099511627776"),
    ("zstd frame declaring too few bytes", "POST", VOL,
     lambda: _volume_body(zstandard.ZstdCompressor().compress(bytes(100))), 400, "declares 100 bytes"),
    ("zstd second frame past the size", "POST", VOL, lambda: _volume_body(GOOD + zstandard.ZstdCompressor().compress(
        bytes(4096))), 400, "more than 65536"),
    ("zstd truncated", "POST", VOL, lambda: _volume_body(_bomb()[:40]), 400, "voxel data"),
    ("zstd garbage", "POST", VOL, lambda: _volume_body(b"\x00garbage" * 50), 400, "not valid zstd"),
    ("zstd 128 MiB window", "POST", VOL, lambda: _volume_body(_wide_window()), 400, "not valid zstd"),
    ("too many voxels", "POST", VOL, lambda: _volume_body(GOOD, shape=(1000, 1000, 1000)), 413, "more than this server's limit"),
    ("volume header too long", "POST", VOL, lambda: P.MAGIC + (1 << 30).to_bytes(4, "little") + b"{}", 400, "truncated or too long"),
    ("not a volume", "POST", VOL, lambda: b"GIF89a" + bytes(100), 400, "not a medvlsam2 volume"),
    # resource exhaustion: JSON
    ("chunked JSON over the limit", "POST", OBJ + "/points", lambda: iter([b" " * 65536, b" " * 65536]), 413, "limit of 65536"),
    ("too many points", "POST", OBJ + "/points", _points([[30, 30, 4]] * 17), 400, "limit of 16"),
    ("list over 1024 entries", "POST", OBJ + "/points", _points([[30, 30, 4]], [1] * 2000), 400, "more than the limit of 1024"),
    ("nested 30000 deep", "POST", OBJ + "/points", b"[" * 30000 + b"]" * 30000, 400, "nested too deeply"),
    ("integer with 400 digits", "POST", OBJ + "/box", json.dumps({"box": [1, 1, 5, 5], "k": 10 ** 400}).encode(), 400, "2^53"),
    ("prompt too long", "POST", SESS + "/{sid}/text", json.dumps({"prompt": MARKER + "x" * 200}).encode(), 400, "longer than 200"),
    ("question too long", "POST", SESS + "/{sid}/ask", json.dumps({"question": MARKER * 30}).encode(), 400, "longer than 200"),
    ("name too long", "POST", SESS + "/{sid}/objects", json.dumps({"name": MARKER * 30}).encode(), 400, "at most 200"),
    ("timeout_s above the server's", "POST", OBJ + "/points", _points([[30, 30, 4]], timeout_s=1e9), 400, "timeout_s"),
    # numbers
    ("3D box with k = 1e308", "POST", OBJ + "/box", b'{"box": [1, 1, 1e308, 5, 5, 2]}', 400, "outside the volume"),
    ("2D box corner 1e308", "POST", OBJ + "/box", b'{"box": [1e308, 1, 5, 5], "k": 2}', 400, "outside the volume"),
    ("point at -1e308", "POST", OBJ + "/points", b'{"points": [[-1e308, 1, 1]], "labels": [1]}', 400, "outside the volume"),
    ("point NaN", "POST", OBJ + "/points", b'{"points": [[NaN, 1, 1]], "labels": [1]}', 400, "finite"),
    ("point Infinity", "POST", OBJ + "/points", b'{"points": [[Infinity, 1, 1]], "labels": [1]}', 400, "finite"),
    ("point -Infinity", "POST", OBJ + "/points", b'{"points": [[1, -Infinity, 1]], "labels": [1]}', 400, "finite"),
    ("point 1e400 literal", "POST", OBJ + "/points", b'{"points": [[1e400, 1, 1]], "labels": [1]}', 400, "finite"),
    ("context box 1e308", "POST", SESS + "/{sid}/ask",
     b'{"question": "q", "context": {"box": [0, 0, 0, 1e308, 5, 5]}}', 400, "outside the volume"),
    # Unicode
    ("lone surrogate in a prompt", "POST", SESS + "/{sid}/text", b'{"prompt": "\\ud800 liver"}', 400, "lone UTF-16 surrogate"),
    ("lone surrogate in a question", "POST", SESS + "/{sid}/ask", b'{"question": "where \\udfff"}', 400, "lone UTF-16 surrogate"),
    ("lone surrogate in a name", "POST", SESS + "/{sid}/objects", b'{"name": "\\udbff"}', 400, "lone UTF-16 surrogate"),
    ("lone surrogate in a key", "POST", OBJ + "/points", b'{"\\ud801": 1, "points": [[1, 1, 1]], "labels": [1]}', 400,
     "lone UTF-16 surrogate"),
    ("invalid UTF-8", "POST", SESS + "/{sid}/text", b'{"prompt": "\xff\xfe liver"}', 400, "not valid JSON"),
    # exact types
    ("boolean object id in a context", "POST", SESS + "/{sid}/ask", b'{"question": "q", "context": {"object": true}}', 400,
     "context must be"),
    ("boolean label", "POST", OBJ + "/points", b'{"points": [[30, 30, 4]], "labels": [true]}', 400, "labels must hold"),
    ("boolean coordinate", "POST", OBJ + "/points", b'{"points": [[true, 30, 4]], "labels": [1]}', 400, "finite numbers"),
    ("boolean k", "POST", OBJ + "/box", b'{"box": [1, 1, 5, 5], "k": true}', 400, "slice index"),
    ("float k", "POST", OBJ + "/box", b'{"box": [1, 1, 5, 5], "k": 2.0}', 400, "slice index"),
    ("boolean in k_range", "POST", OBJ + "/propagate", b'{"k_range": [true, 3]}', 400, "k_range"),
    ("float in k_range", "POST", OBJ + "/propagate", b'{"k_range": [0.0, 3]}', 400, "k_range"),
    ("text coordinate", "POST", OBJ + "/points", b'{"points": [["30", 30, 4]], "labels": [1]}', 400, "finite numbers"),
    ("boolean timeout_s", "POST", OBJ + "/points", _points([[30, 30, 4]], timeout_s=True), 400, "timeout_s"),
    ("body is a list", "POST", OBJ + "/points", b"[1, 2, 3]", 400, "send"),
    ("box body is null", "POST", OBJ + "/box", b"null", 400, "send"),
    ("k_range of three", "POST", OBJ + "/propagate", b'{"k_range": [0, 1, 2]}', 400, "k_range"),
    ("direction sideways", "POST", OBJ + "/propagate", b'{"direction": "sideways"}', 400, "direction must be"),
    ("context box of five", "POST", SESS + "/{sid}/ask", b'{"question": "q", "context": {"box": [0, 0, 0, 5, 5]}}', 400,
     "context box"),
    ("volume id not hex", "POST", SESS, json.dumps({"volume_id": MARKER * 5}).encode(), 400, "64 hex digits"),
    ("volume id boolean", "POST", SESS, b'{"volume_id": true}', 400, "64 hex digits"),
    ("object id 0", "POST", SESS + "/{sid}/objects/0/undo", b"", 400, "start at 1"),
    ("object id text", "POST", SESS + "/{sid}/objects/abc/undo", b"", 422, "invalid"),
    ("unknown session", "POST", SESS + "/" + MARKER + "/objects", b"{}", 404, "unknown session"),
    # geometry
    ("direction scaled by 2", "POST", VOL, lambda: _volume_body(direction=[2.0, 0, 0, 0, 2.0, 0, 0, 0, 2.0]), 400, "direction"),
    ("direction sheared", "POST", VOL, lambda: _volume_body(direction=[1.0, 0.5, 0, 0, 1.0, 0, 0, 0, 1.0]), 400, "orthonormal"),
    ("direction all zero", "POST", VOL, lambda: _volume_body(direction=[0.0] * 9), 400, "orthonormal"),
    ("direction NaN", "POST", VOL, lambda: _raw_header('{"dtype": "int16", "shape": [8, 64, 64], "spacing": [1, 1, 1], '
                                                       '"origin": [0, 0, 0], "direction": [NaN, 0, 0, 0, 1, 0, 0, 0, 1]}'),
     400, "finite"),
    ("spacing zero", "POST", VOL, lambda: _volume_body(spacing=[0.0, 1.0, 1.0]), 400, "positive"),
    ("spacing negative", "POST", VOL, lambda: _volume_body(spacing=[1.0, -1.0, 1.0]), 400, "positive"),
    ("spacing 1e300", "POST", VOL, lambda: _volume_body(spacing=[1.0, 1.0, 1e300]), 400, "spacing"),
    ("origin 1e308", "POST", VOL, lambda: _volume_body(origin=[1e308, 0.0, 0.0]), 400, "origin"),
    ("shape with a boolean", "POST", VOL, lambda: _raw_header('{"dtype": "int16", "shape": [true, 64, 64], "spacing": '
                                                              '[1, 1, 1], "origin": [0, 0, 0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}'),
     400, "three integers"),
    # echo
    ("404 with a 4000-character path", "GET", "/v1/" + MARKER + "x" * 4000, b"", 404, "not a route"),
    ("a 10000-character coordinate", "POST", OBJ + "/points", _points([[MARKER * 1000, 1, 1]]), 400, "finite numbers"),
]


@pytest.mark.parametrize("name, method, path, body, status, words", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_a_4xx_json_error_with_a_message(server, sess, name, method, path, body, status, words):
    body = body() if callable(body) else body
    try:
        r = httpx.request(method, server.url + path.format(sid=sess.sid), content=body, headers=_auth(server), timeout=30)
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pytest.fail("the server closed the connection instead of answering")
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] and words in err["message"], (name, err)
    assert len(err["message"]) < 450 and MARKER * 2 not in err["message"] and "x" * 100 not in err["message"]


def test_the_suite_has_at_least_40_cases():
    assert len(CASES) >= 40


def _raw(server, data: bytes, timeout: float = 15.0) -> bytes:
    """Send ``data`` over a plain socket and read until the server answers and closes (or ``timeout``)."""
    u = urlparse(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out and out.endswith(b"}"):
                break
    return out


def test_content_length_over_the_limit_is_refused_before_the_body(server, sess):
    """10 MB announced on a JSON route, only the head sent: 413 at once, not 408 after the body timeout."""
    head = (f"POST /v1/sessions/{sess.sid}/objects/1/points HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{server.token}\r\nContent-Type: application/json\r\nContent-Length: {10 << 20}\r\n\r\n").encode()
    out = _raw(server, head)
    assert out.startswith(b"HTTP/1.1 413") and b"too_large" in out, out[:200]
    head = head.replace(b"/v1/sessions/%s/objects/1/points" % sess.sid.encode(), b"/v1/volumes")
    out = _raw(server, head.replace(str(10 << 20).encode(), str(3 << 20).encode()))  # over --max-upload-mb 2
    assert out.startswith(b"HTTP/1.1 413") and b"too_large" in out, out[:200]


def test_a_stalled_body_gets_408_and_a_stalled_head_is_closed(server, sess):
    head = (f"POST /v1/sessions/{sess.sid}/objects/1/points HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{server.token}\r\nContent-Length: 100\r\n\r\n").encode()
    out = _raw(server, head + b'{"points"')  # then nothing: the request timeout is 2 s
    assert out.startswith(b"HTTP/1.1 408") and b"request_timeout" in out and b"stalled" in out, out[:200]
    # a head that never completes: the connection is closed (no route ever sees it)
    assert _raw(server, b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nX-Slow: ") == b""


def test_full_server_answers_503_with_retry_after_and_the_client_says_when(server, client, sess):
    vid = client.ensure_volume(phantom(1))
    opened, refused = [], None
    for _ in range(8):
        r = httpx.post(server.url + "/v1/sessions", json={"volume_id": vid}, headers=_auth(server), timeout=30)
        if r.status_code != 200:
            refused = r
            break
        opened.append(r.json()["session_id"])
    try:
        assert refused is not None and refused.status_code == 503 and len(opened) <= 5
        assert refused.json()["error"]["code"] == "too_many_sessions" and "limit of 6" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        with pytest.raises(P.ServerBusy, match="limit of 6") as info:
            client.open_session(phantom(1))
        assert info.value.retry_after_s >= 1
    finally:
        for sid in opened:
            httpx.delete(f"{server.url}/v1/sessions/{sid}", headers=_auth(server))
    client.open_session(phantom(1)).close()  # room again


def _lines(r: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def test_a_timed_out_call_is_cancelled_and_commits_nothing(server, client):
    """A deadline the machine cannot meet (20 ms for 64 slices; 1 ms for a click): the answer says so
    and the server's mask and undo history are as before."""
    with client.open_session(phantom(2, shape=(64, 64, 64))) as s:
        o = s.add_object()
        s.add_points(o, [[32, 32, 32]], [1])
        before = s.mask(o)
        url = f"{server.url}/v1/sessions/{s.sid}/objects/{o}"
        lines = _lines(httpx.post(url + "/propagate", json={"timeout_s": 0.02}, headers=_auth(server), timeout=60))
        err = lines[-1]["error"]
        assert err["code"] == "timeout" and "nothing was changed" in err["message"]
        r = httpx.post(url + "/points", json={"points": [[20, 20, 32]], "labels": [1], "timeout_s": 0.001},
                       headers=_auth(server), timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert np.array_equal(s.mask(o), before)
        undone = httpx.post(url + "/undo", headers=_auth(server), timeout=60).json()["result"]
        assert undone["bbox"] is not None  # the one committed step (the first click) is what undo takes back
        r = httpx.post(url + "/undo", headers=_auth(server), timeout=60)
        assert r.status_code == 400 and "nothing to undo" in r.json()["error"]["message"]


def test_health_answers_during_a_propagation_with_50_queued_requests(server, client):
    """Health is its own async handler: it never waits for the model worker or a session lock."""
    a = client.open_session(phantom(3, shape=(64, 64, 64)))
    b = Client(server.url, server.token, timeout=120).open_session(phantom(4))
    oa, ob = a.add_object(), b.add_object()
    a.add_points(oa, [[32, 32, 32]], [1])
    b.add_points(ob, [[32, 32, 4]], [1])
    latencies, failures, stop, progress = [], [], threading.Event(), threading.Event()

    def poll() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = httpx.get(server.url + "/v1/health", headers=_auth(server), timeout=10)
                latencies.append((time.perf_counter() - t0, r.json()["waiting_calls"]))
            except Exception as exc:  # reported below: health must always answer
                failures.append(repr(exc))
            time.sleep(0.05)

    clicks = httpx.Client(headers=_auth(server), timeout=120, limits=httpx.Limits(max_connections=60))

    def click(n: int) -> int:
        target = (a, oa) if n % 2 else (b, ob)
        path = f"/v1/sessions/{target[0].sid}/objects/{target[1]}/points"
        return clicks.post(server.url + path, json={"points": [[30 + n % 5, 32, 4]], "labels": [1]}).status_code

    poller = threading.Thread(target=poll)
    prop = threading.Thread(target=lambda: a.propagate(oa, progress=lambda d, n: progress.set()))
    prop.start()
    assert progress.wait(60)
    poller.start()
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(click, range(50)))
    prop.join(120)
    clicks.close()
    stop.set()
    poller.join(30)
    assert codes == [200] * 50 and not failures, failures
    worst = max(t for t, _ in latencies)
    busiest = max(w for _, w in latencies)
    print(f"health during the flood: {len(latencies)} answers, max {worst * 1000:.0f} ms, "
          f"median {np.median([t for t, _ in latencies]) * 1000:.0f} ms, up to {busiest} calls waiting")
    assert len(latencies) >= 3 and busiest >= 5  # health answered while calls were really queued
    a.close()
    b.close()


def test_disconnects_mid_body_and_mid_stream_leave_the_server_healthy(server, sess):
    u = urlparse(server.url)
    for path, body in ((f"/v1/sessions/{sess.sid}/objects/1/points", b'{"points": [["' + MARKER.encode()),
                       ("/v1/volumes", _volume_body()[:200])):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
                f"Content-Length: 100000\r\n\r\n").encode()
        with socket.create_connection((u.hostname, u.port)) as s:
            s.sendall(head + body)  # then vanish
    with httpx.stream("POST", f"{server.url}/v1/sessions/{sess.sid}/objects/1/propagate", json={},
                      headers=_auth(server), timeout=30) as r:
        next(r.iter_lines())  # one line, then hang up
    assert httpx.get(server.url + "/v1/health", headers=_auth(server)).json()["status"] == "ok"
    sess.add_points(1, [[30, 30, 4]], [1])  # the session is free again


# ----- keep last: they read what the whole module did ---------------------------------------------
def test_zz_peak_rss_stays_within_100_mb_of_idle(server):
    peak, idle = server.sampler.peak, server.rss_idle
    print(f"server RSS idle {idle / 2**20:.0f} MiB, peak during the module {peak / 2**20:.0f} MiB")
    assert peak - idle < 100 * 2**20, (idle, peak)


def test_zz_log_holds_counts_and_codes_only(server):
    time.sleep(0.5)
    text = server.log_path.read_text(errors="replace")
    assert "Traceback" not in text and MARKER not in text
    assert "client disconnected" in text  # the disconnects were logged, as a count-like line
