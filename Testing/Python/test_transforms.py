"""MONAI preprocessing keeps anatomy in place whatever the input orientation and spacing."""

from dataclasses import replace

import numpy as np

from medvlsam2.data.synthetic import generate_case
from medvlsam2.data.transforms import (intensity_transform, persistent_cases, record_case, standardize,
                                       standardize_transform)
from medvlsam2.io.windowing import apply_window
from medvlsam2.io.volume import Volume


def _centroid_mm(case, value):
    ijk = np.argwhere(case.labels == value)[:, ::-1].mean(0)
    return (case.volume.ijk_to_lps() @ np.append(ijk, 1.0))[:3]


def test_flipped_input_gives_the_same_standard_case():
    case = generate_case(3, shape=(12, 48, 48), spacing=(7.5, 7.5, 13.3))
    v = case.volume
    # The same patient stored with i running right-ward: flip the columns, negate the i direction.
    flipped_origin = v.ijk_to_lps() @ np.array([v.shape[2] - 1, 0, 0, 1.0])
    flipped = replace(case, volume=Volume(v.array[:, :, ::-1], v.spacing, flipped_origin[:3], np.diag([-1.0, 1, 1])),
                      labels=case.labels[:, :, ::-1])
    t = standardize_transform(spacing=v.spacing)
    a, b = standardize(case, t), standardize(flipped, t)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.volume.array, b.volume.array)
    assert np.allclose(_centroid_mm(a, 1), _centroid_mm(case, 1), atol=1.0)


def test_resampling_keeps_organ_volume_and_crops_to_the_body():
    case = generate_case(4, shape=(12, 48, 48), spacing=(7.5, 7.5, 13.3))
    out = standardize(case, standardize_transform(spacing=(3.75, 3.75, 13.3)))
    assert out.volume.shape[0] == 12 and out.volume.shape[2] <= 96
    assert np.allclose(out.volume.spacing, (3.75, 3.75, 13.3))
    ml = lambda c, v: (c.labels == v).sum() * np.prod(c.volume.spacing)  # noqa: E731 - organ volume in mm3
    for organ in (1, 2, 3, 4):
        assert abs(ml(out, organ) / ml(case, organ) - 1) < 0.1
    assert out.volume.array.min() >= -1024 and out.label_names == case.label_names


def test_disk_cache_serves_preprocessed_cases_without_reading_them_again(tmp_path):
    cases = [generate_case(s, shape=(8, 32, 32), spacing=(11.2, 11.2, 20.0)) for s in (1, 2)]
    reads = []

    class Counting(list):
        def __getitem__(self, i):
            reads.append(i)
            return list.__getitem__(self, i)

    transform = standardize_transform(spacing=(11.2, 11.2, 20.0))
    ds = persistent_cases(Counting(cases), tmp_path, "test", transform)
    first = record_case(ds[1])
    again = record_case(persistent_cases(Counting(cases), tmp_path, "test", transform)[1])
    assert reads == [1] and len(ds) == 2 and first.case_id == "synthetic-2" and first.volume.array.dtype == np.int16
    want = standardize(cases[1], transform)
    assert np.array_equal(again.labels, want.labels) and np.array_equal(again.volume.array, want.volume.array)
    assert again.report == cases[1].report and again.referring == cases[1].referring
    assert np.allclose(again.volume.ijk_to_ras(), want.volume.ijk_to_ras())


def test_the_case_record_keeps_every_annotation():
    """The record dropped region questions once, so no streamed training step ever drew one."""
    import dataclasses

    from medvlsam2.data.transforms import case_record
    from medvlsam2.evaluation.language import held_out_findings

    case = generate_case(7, findings=held_out_findings(100002))  # liver lesions and a cyst
    back = record_case(case_record(case))
    assert case.region_qa and any(q.component for q in case.region_qa)
    for f in dataclasses.fields(case):
        mine, theirs = getattr(case, f.name), getattr(back, f.name)
        if f.name == "volume":
            assert np.array_equal(mine.array, theirs.array) and mine.spacing == theirs.spacing
        elif isinstance(mine, np.ndarray):
            assert np.array_equal(mine, theirs)
        else:
            assert mine == theirs, f.name


def test_intensity_transform_matches_the_model_windowing():
    case = generate_case(2, shape=(8, 32, 32), spacing=(11.2, 11.2, 20.0))
    out = intensity_transform("abdomen")({"image": case.volume.array.astype(np.float32)})["image"]
    out = np.asarray(out)
    assert np.allclose(out, apply_window(case.volume.array, "abdomen"), atol=1e-5)
    assert out.min() == 0.0 and out.max() == 1.0  # air clipped to 0, bone to 1
