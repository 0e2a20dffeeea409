"""Prompt semantics of the Session (tiny model, CPU): box bounds, work limited to a slice range, early
stop once the object ends, corrections that change only what they touch, diff history, per-session caches."""

import threading

import numpy as np
import pytest
import torch

from medvlsam2.errors import InputError
from medvlsam2.io.volume import Volume
from medvlsam2.session import Session

from phantoms import ellipsoid, ellipsoid_volume, hu

K, H, W = 16, 32, 32


@pytest.fixture
def session(model, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return Session(model, ellipsoid_volume((K, H, W), (8, 16, 16), (7, 9, 10), (0.8, 0.8, 2.0)))


@pytest.fixture
def decoded(session, monkeypatch):
    """Slice indices SAM2 decodes (every mask decode goes through ``track_step``)."""
    calls: list[int] = []
    original = session.predictor.track_step

    def counting(*args, **kwargs):
        calls.append(int(kwargs["frame_idx"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(session.predictor, "track_step", counting)
    return calls


def test_a_3d_box_bounds_work_and_writes_to_its_slices(session, decoded):
    obj = session.add_object()
    session.add_box(obj, (8, 8, 5, 24, 24, 9), ends=True)
    assert sorted(set(decoded)) == [5, 7, 9]  # middle, first and last slice
    decoded.clear()
    result = session.propagate(obj)
    assert set(decoded) <= set(range(5, 10))  # SAM2 never ran outside the box's slices
    mask = session.mask(obj)
    assert not mask[:5].any() and not mask[10:].any()
    assert result.bbox is None or (5 <= result.bbox[0] and result.bbox[1] <= 10)
    assert session.bound(obj) == (5, 9)
    with pytest.raises(InputError, match="does not overlap"):
        session.propagate(obj, k_range=(11, 13))
    session.add_points(obj, [[16, 16, 11]], [1])  # a positive click outside widens the bound
    assert session.bound(obj) == (5, 11)
    session.undo(obj)
    assert session.bound(obj) == (5, 9) and np.array_equal(session.mask(obj), mask)


def test_a_slice_range_limits_what_sam2_decodes(session, decoded):
    obj = session.add_object()
    session.add_points(obj, [[16, 16, 8]], [1])
    decoded.clear()
    session.propagate(obj, k_range=(6, 10))
    assert set(decoded) == {6, 7, 9, 10}  # slice 8 holds the click's output; nothing outside 6..10
    assert not session.mask(obj)[:6].any() and not session.mask(obj)[11:].any()
    assert session.feature_cache.encoder_calls == 5  # and only those slices were encoded


def test_propagation_stops_once_the_object_has_ended(session, decoded, monkeypatch):
    cfg = session.model.config.segmenter
    object_slices = range(6, 10)  # the object's object-score logit is positive only here
    monkeypatch.setattr(session.predictor, "object_score",
                        lambda state, k, obj_id=1: 2.0 if k in object_slices else -5.0)
    obj = session.add_object()
    session.add_points(obj, [[16, 16, 8]], [1])
    decoded.clear()
    session.propagate(obj)
    n = cfg.stop_after_slices
    assert max(decoded) == object_slices[-1] + n and min(decoded) == object_slices[0] - n
    mask = session.mask(obj)
    assert not mask[:object_slices[0] - n].any() and not mask[object_slices[-1] + n + 1:].any()


def _two_blobs() -> np.ndarray:
    blobs = np.zeros((H, W), np.uint8)
    blobs[8:24, 4:18] = 1  # the large blob
    blobs[10:14, 24:28] = 1  # a small false-positive blob
    return blobs


@pytest.mark.parametrize("click, blob", [((25, 11), (slice(10, 14), slice(24, 28))),
                                         ((10, 16), (slice(8, 24), slice(4, 18)))])
def test_a_negative_click_changes_only_the_blob_it_lands_in(session, click, blob):
    obj = session.add_object()
    session.add_points(obj, [[16, 16, 8]], [1])
    session.propagate(obj, k_range=(6, 9))
    session._commit(obj, {7: _two_blobs()}, session._objects[obj].prompts, {}, None)  # a slice with two blobs
    before = session.mask(obj)
    session.add_points(obj, [[click[0], click[1], 7]], [-1])
    after = session.mask(obj)
    changed = before != after
    assert not changed[np.arange(K) != 7].any()  # other slices untouched
    inside = np.zeros((H, W), bool)
    inside[blob] = True
    assert not changed[7][~inside].any()  # only the clicked blob's component changed
    if blob[1].start == 24:  # the small blob is removed whole
        assert not after[7][inside].any()
    # SAM2's stored logits agree with the kept mask, so memory carries the correction
    out = session.predictor._stored_output(session._objects[obj].state, 7)
    low = torch.nn.functional.interpolate(torch.from_numpy(after[7]).float()[None, None], out["pred_masks"].shape[-2:],
                                          mode="area") > 0.5
    assert torch.equal(out["pred_masks"] > 0, low)


def test_a_positive_click_only_adds(session):
    obj = session.add_object()
    session._commit(obj, {7: _two_blobs()}, [], {}, None)
    before = session.mask(obj)
    session.add_points(obj, [[20, 28, 7]], [1])
    after = session.mask(obj)
    assert not (before & ~after).any()  # nothing erased


def test_history_is_diffs_within_budget_and_undo_is_exact(model, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    volume = Volume(np.full((K, H, W), 100, np.int16))
    s = Session(model, volume)
    obj = s.add_object()
    snapshots = [s.mask(obj)]
    for k in (8, 6, 10):
        s.add_box(obj, (4, 4, 26, 26), k=k)
        snapshots.append(s.mask(obj))
    s.propagate(obj, k_range=(5, 11))
    snapshots.append(s.mask(obj))
    s.add_points(obj, [[5, 5, 3], [20, 20, 12]], [-1, 1])
    for expected in reversed(snapshots):
        s.undo(obj)
        assert np.array_equal(s.mask(obj), expected)
    with pytest.raises(InputError, match="nothing to undo"):
        s.undo(obj)

    one_slice = H * W  # a step stores the changed box only; give room for about three one-slice steps
    small = Session(model, volume, history_mb=3.5 * one_slice / 2**20)
    obj = small.add_object()
    for k in range(6):
        small._commit(obj, {k: np.ones((H, W), np.uint8)}, [], {}, None)  # each step changes one whole slice
        assert small.history_bytes <= small.history_bytes_budget
    for k in (5, 4, 3):
        small.undo(obj)
        assert not small.mask(obj)[k].any() and small.mask(obj)[k - 1].all()
    with pytest.raises(InputError, match="cannot undo further"):
        small.undo(obj)


def test_a_second_session_keeps_the_first_ones_features(model, session):
    obj = session.add_object()
    session.add_points(obj, [[16, 16, 8]], [1])
    session.propagate(obj, k_range=(6, 10))
    calls, cached = session.feature_cache.encoder_calls, len(session.feature_cache)
    other = Session(model, session.volume, cache_mb=1)
    o2 = other.add_object()
    other.add_points(o2, [[16, 16, 8]], [1])
    other.propagate(o2, k_range=(6, 10))
    assert other.feature_cache.encoder_calls >= 1  # it encoded its own slices
    session.propagate(obj, k_range=(6, 10))
    assert session.feature_cache.encoder_calls == calls and len(session.feature_cache) == cached  # none evicted


def test_background_encoding_yields_to_a_click_and_stops_on_close(model, session, monkeypatch):
    predictor, log = session.predictor, []
    permits, entered = threading.Semaphore(0), threading.Event()
    original = predictor.encode_slices

    def encode(state, ks):
        background = threading.current_thread().name == "medvlsam2-prefetch"
        if background:  # each background batch waits for the test's permit, so the order is fixed
            entered.set()
            permits.acquire()
        log.append(("background" if background else "click", tuple(ks)))
        return original(state, ks)

    monkeypatch.setattr(predictor, "encode_slices", encode)
    s = Session(model, session.volume, prefetch=True)
    assert entered.wait(60)  # the background holds the gate for its first slice
    obj = s.add_object()
    clicker = threading.Thread(target=lambda: (log.append(("start",)), s.add_points(obj, [[16, 16, 3]], [1]),
                                               log.append(("end",))))
    clicker.start()
    while predictor.gate._foreground == 0:  # the click is waiting for the gate
        threading.Event().wait(0.01)
    permits.release()  # let the batch in flight finish
    clicker.join(120)
    during = log[log.index(("start",)):log.index(("end",))]
    assert [e[0] for e in during] == ["start", "background", "click"]  # waited for one slice's encoding only
    assert during[2][1] == (3,)
    closer = threading.Thread(target=s.close)
    closer.start()
    permits.release(K)  # unblock a batch that may have started meanwhile
    closer.join(120)
    assert not s._prefetcher.is_alive() and len(s.feature_cache) == 0
    background = [e for e in log if e[0] == "background"]
    assert len(background) <= 2 < K  # cancelled long before every slice was encoded


def test_background_encoding_fills_the_cache_within_its_budget(model, session):
    s = Session(model, session.volume, prefetch=True)
    s._prefetcher.join(120)
    assert s.feature_cache.encoder_calls == K == len(s.feature_cache)
    obj = s.add_object()
    s.add_points(obj, [[16, 16, 8]], [1])
    s.propagate(obj)
    assert s.feature_cache.encoder_calls == K  # the first propagation encoded nothing
    per_slice = s.feature_cache.per_slice_bytes()
    s.close()
    small = Session(model, session.volume, cache_mb=2.5 * per_slice / 2**20, prefetch=True)
    small._prefetcher.join(120)
    assert small.feature_cache.encoder_calls == len(small.feature_cache) == 2  # stopped at the budget, no eviction
    small.close()


def _scripted_box_decoder(session, monkeypatch):
    """SAM2 scripted on the phantom ellipsoid: a prompt answers the true slice mask; a box decode offers three
    candidates (everything in the box, the object, nothing) with SAM2 preferring the first; clicks alone offer
    (the object's left half, the object, nothing)."""
    truth = session.volume.array > 0

    def logits(m):
        return torch.from_numpy(np.where(m, 10.0, -10.0).astype(np.float32))

    def decode(state, k, box=None, points=(), labels=()):
        first = truth[k].copy()
        if box is None:
            first[:, first.shape[1] // 2:] = False
        else:
            i0, j0, i1, j1 = (int(round(v)) for v in box)
            first[:] = False
            first[j0:j1 + 1, i0:i1 + 1] = True
        return torch.stack([logits(first), logits(truth[k]), logits(np.zeros_like(first))]), torch.tensor([0.9, 0.5, 0.1]), 5.0

    monkeypatch.setattr(session, "_add", lambda o, p: logits(truth[p.k])[None, None])
    monkeypatch.setattr(session.predictor, "decode_without_memory", decode)
    monkeypatch.setattr(session.predictor.config, "propagation", "box")
    return truth


def test_box_propagation_takes_the_candidate_that_continues_the_object(session, monkeypatch):
    truth = _scripted_box_decoder(session, monkeypatch)
    monkeypatch.setattr(session.predictor.config, "box_margin", 0.1)  # room for this ellipsoid's growth per slice
    obj = session.add_object()
    session.add_box(obj, (6, 7, 2, 26, 25, 14))
    session.propagate(obj)
    mask = session.mask(obj) > 0
    assert (mask[2:15] == truth[2:15]).all() and not mask[:2].any() and not mask[15:].any()


def test_box_propagation_a_correction_that_empties_a_slice_keeps_its_neighbours(session, monkeypatch):
    truth = _scripted_box_decoder(session, monkeypatch)
    obj = session.add_object()
    session.add_box(obj, (6, 7, 2, 26, 25, 14))
    session.propagate(obj)
    before = session.mask(obj).copy()
    session.add_points(obj, [[16, 16, 11]], [-1])  # only the empty candidate obeys the click
    session.propagate(obj)
    after = session.mask(obj)
    assert not after[11].any() and (after[:11] == before[:11]).all() and (after[12:] == before[12:]).all()


def test_box_propagation_from_a_click_runs_to_the_object_ends_and_not_into_a_neighbour(model, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    k, j, i = np.mgrid[:K, :H, :W]
    organ = ellipsoid((K, H, W), (8, 16, 10), (7, 6, 5))
    other = (np.abs(j - 16) < 3) & (np.abs(i - 22) < 2) & (k >= 9)  # a neighbour that joins the box later
    session = Session(model, hu(organ | other, (0.8, 0.8, 2.0)))
    _scripted_box_decoder(session, monkeypatch)
    obj = session.add_object()
    session.add_points(obj, [[10, 16, 8]], [1])  # a click: no box bound, the object may run to both ends
    assert ((session.mask(obj)[8] > 0) == organ[8]).all()  # the stable candidate SAM2 gives back, not the part
    session.propagate(obj)
    mask = session.mask(obj) > 0
    assert (mask[organ]).all() and not mask[other & ~organ].any()


def test_box_propagation_from_a_click_ends_where_a_touching_neighbour_of_another_density_begins(model, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    organ = ellipsoid((K, H, W), (6, 16, 12), (5, 6, 5))  # slices 2..10
    neighbour = np.zeros_like(organ)
    neighbour[11:16, 8:24, 4:20] = True  # fills the box past the organ's last slice, at 60 HU
    array = np.where(organ, 150, np.where(neighbour, 60, -900)).astype(np.int16)
    session = Session(model, Volume(array, (0.8, 0.8, 2.0)))
    _scripted_box_decoder(session, monkeypatch)
    obj = session.add_object()
    session.add_points(obj, [[12, 16, 6]], [1])
    session.propagate(obj)
    mask = session.mask(obj) > 0
    assert mask[organ].all() and not mask[11:].any()
    monkeypatch.setattr(session.predictor.config, "end_hu_change", 0)  # the rule off: the chain runs on into the neighbour
    session.reset(obj)
    session.add_points(obj, [[12, 16, 6]], [1])
    session.propagate(obj)
    assert (session.mask(obj)[11:] > 0).any()


def test_box_mode_clicks_decode_in_the_objects_box_and_a_negative_click_keeps_an_anchor(session, monkeypatch):
    truth = _scripted_box_decoder(session, monkeypatch)
    scripted = session.predictor.decode_without_memory
    calls = []

    def recording(state, k, box=None, points=(), labels=()):
        calls.append((k, box, [list(map(float, pt)) for pt in points], list(labels)))
        return scripted(state, k, box, points, labels)

    monkeypatch.setattr(session.predictor, "decode_without_memory", recording)
    obj = session.add_object()
    session.add_box(obj, (6, 7, 8, 26, 25, 8))  # one slice: 8
    calls.clear()
    session.add_points(obj, [[16, 16, 9]], [1])  # slice 9 is empty, next to slice 8's mask
    k, box, points, labels = calls[0]
    jj, ii = np.nonzero(session.mask(obj)[8])
    assert k == 9 and box is not None and box[0] <= ii.min() and box[2] >= ii.max() and labels == [1]
    calls.clear()
    session.add_points(obj, [[11, 16, 8]], [-1])  # near the mask's edge: SAM2 also gets its innermost pixel, +1
    k, box, points, labels = calls[0]
    depth_centre = [16.0, 16.0]  # the scripted ellipsoid's slice is centred at (i, j) = (16, 16)
    assert k == 8 and labels == [0, 1] and np.hypot(*(np.subtract(points[1], depth_centre))) <= 1.5
