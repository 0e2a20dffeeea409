"""One scenario, every implementation of ``medvlsam2.api.SessionAPI``: the local ``Session``, the client's
``RemoteSession`` against a real ``medvlsam2 serve`` process, and the panel tests' ``FakeSession``.

Each result's patch is written into a buffer the test owns (as the panel writes its labelmap); the buffer must
equal what ``mask(obj)`` answers after every step. An operation that exists on one implementation and not on the
others (or with other parameter names) fails ``test_every_implementation_has_exactly_the_api``.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from medvlsam2.api import LIFECYCLE, OPERATIONS, SessionAPI  # noqa: E402
from medvlsam2.client import RemoteSession  # noqa: E402
from medvlsam2.errors import InputError, UnknownObjectError  # noqa: E402
from medvlsam2.io.volume import Volume  # noqa: E402
from medvlsam2.results import SegmentationResult, TextResult  # noqa: E402
from medvlsam2.utils.cancel import CancelToken  # noqa: E402

SHAPE = (8, 24, 32)  # k, j, i: the fake's volume
API = set(OPERATIONS) | set(LIFECYCLE)
LOCAL_ONLY = {"held_bytes", "visual_tokens"}  # Session diagnostics of an in-process model


def _fake_class():
    try:
        from test_slicer_mrml import FakeSession
    except BaseException as exc:  # pytest's module-level skip when slicer-core is missing
        pytest.skip(f"the fake lives in test_slicer_mrml.py, which needs slicer-core ({exc})")
    return FakeSession


def _volume() -> Volume:
    rng = np.random.default_rng(3)
    k, j, i = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    inside = ((k - 4) / 3) ** 2 + ((j - 12) / 7) ** 2 + ((i - 16) / 9) ** 2 <= 1
    return Volume((rng.normal(40, 15, SHAPE) + 200 * inside).astype(np.int16), (0.8, 0.8, 2.5))


def _public(cls) -> set[str]:
    return {n for n, v in inspect.getmembers(cls, inspect.isroutine) if not n.startswith("_")}


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


@pytest.fixture(scope="module")
def server():
    from medvlsam2.server.launcher import launch_server

    srv = launch_server(model="tiny", device="cpu", extra_args=["--seed", "0"])
    yield srv
    srv.stop()


def test_every_implementation_has_exactly_the_api():
    from medvlsam2.session import Session

    for cls, extra in ((Session, LOCAL_ONLY), (RemoteSession, set()), (_fake_class(), set())):
        assert _public(cls) - extra == API, f"{cls.__name__}: {sorted(_public(cls) - extra ^ API)} differ from the API"
        for name in API:
            assert _params(getattr(cls, name)) == _params(getattr(SessionAPI, name)), f"{cls.__name__}.{name}"
    assert set(OPERATIONS) | set(LIFECYCLE) == _public(SessionAPI)


def scenario(s: SessionAPI) -> None:
    """What every SessionAPI does, whatever its model: ids, names, results as patches, undo/redo, errors."""
    assert isinstance(s, SessionAPI)
    buffers: dict[int, np.ndarray] = {}

    def took(r: SegmentationResult) -> None:
        assert isinstance(r, SegmentationResult) and r.object_id in s.objects()
        r.apply_to(buffers.setdefault(r.object_id, np.zeros(SHAPE, np.uint8)))
        assert np.array_equal(buffers[r.object_id], s.mask(r.object_id)), "a result is not what mask() holds"

    a = s.add_object("liver")
    assert isinstance(a, int) and s.objects() == {a: "liver"} and not s.mask(a).any() and s.bound(a) is None
    took(s.add_points(a, [[16, 12, 4]], [1]))
    with pytest.raises(InputError):
        s.add_points(a, [[16, 12, 4]], [2])
    took(s.add_box(a, (10, 6, 2, 22, 18, 6), ends=True))
    assert s.bound(a) == (2, 6)
    took(s.add_box(a, (10, 6, 22, 18), k=4))
    seen: list[tuple[int, int]] = []
    took(s.propagate(a, cancel=CancelToken(), progress=lambda d, n: seen.append((d, n))))
    assert seen and all(d <= n for d, n in seen)
    took(s.undo(a))
    took(s.redo(a))
    text = s.segment_text("liver and absent", force=True)
    assert isinstance(text, TextResult) and {n.target for n in text.not_found} <= {"liver", "absent"}
    for r in text.found:
        took(r)
    assert all(isinstance(t, str) for t in s.ask("What is this?"))
    assert "".join(s.report()) == "".join(s.report())
    took(s.reset(a))
    assert not s.mask(a).any()
    s.remove(a)
    assert a not in s.objects()
    with pytest.raises(UnknownObjectError):
        s.undo(a)
    s.close()


def test_scenario_on_the_local_session(model):
    from medvlsam2.session import Session

    scenario(Session(model, _volume()))


def test_scenario_on_the_remote_session(server):
    from medvlsam2.client import Client

    c = Client(server.url, server.token, timeout=120)
    try:
        scenario(c.open_session(_volume()))
    finally:
        c.close()


def test_scenario_on_the_fake():
    fake = _fake_class()()
    fake.gate.set()
    scenario(fake)


def test_a_remote_result_reaches_the_callers_buffer_only_after_it_succeeded(server):
    from medvlsam2.client import Client

    written: list[SegmentationResult] = []
    c = Client(server.url, server.token, timeout=120)
    try:
        with c.open_session(_volume(), on_result=written.append) as s:
            obj = s.add_object()
            r = s.add_points(obj, [[16, 12, 4]], [1])
            assert written == [r]
            with pytest.raises(InputError):
                s.add_box(obj, (10, 6, 9, 18), k=4)  # empty box: refused by the engine, nothing delivered
            assert written == [r]
    finally:
        c.close()


