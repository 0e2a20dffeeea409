"""CT reading, geometry (LPS/RAS), windowing and mask writing."""

import logging

import numpy as np
import pytest
import SimpleITK as sitk

from medvlsam2.errors import InputError
from medvlsam2.io.volume import Volume, read_volume, write_mask
from medvlsam2.io.windowing import PRESETS, apply_window, get_window

OBLIQUE = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])


def ct_volume(shape=(6, 10, 12)) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.integers(-1000, 1500, shape).astype(np.int16), (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), OBLIQUE)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_formats_preserve_voxels_and_oblique_geometry(tmp_path, suffix):
    vol = ct_volume()
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(vol.to_sitk(), str(path))
    back = read_volume(path)
    assert np.array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.ijk_to_lps(), vol.ijk_to_lps(), atol=1e-5)
    # Our matrix agrees with ITK's own index -> physical mapping (LPS), and RAS flips x and y.
    image = sitk.ReadImage(str(path))
    for ijk in [(0, 0, 0), (3, 7, 5), (11, 9, 5)]:
        lps = back.ijk_to_lps() @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(lps[:3], image.TransformIndexToPhysicalPoint(ijk), atol=1e-4)
        ras = back.ijk_to_ras() @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(ras[:3], lps[:3] * [-1, -1, 1], atol=1e-9)


def test_slicer_ijk_to_ras_round_trip():
    vol = ct_volume()
    again = Volume.from_ijk_to_ras(vol.array, vol.ijk_to_ras())
    np.testing.assert_allclose(again.ijk_to_lps(), vol.ijk_to_lps(), atol=1e-9)


def test_dicom_series(tmp_path):
    vol = ct_volume((4, 16, 16))
    image = vol.to_sitk()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(vol.shape[0]):
        sl = image[:, :, k]
        for tag, value in {
            "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0013": str(k + 1), "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0037": "\\".join(map(str, OBLIQUE[:, 0].tolist() + OBLIQUE[:, 1].tolist())),
            "0028|0030": "0.8\\0.7", "0018|0050": "2.5",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"{k:03d}.dcm"))
        writer.Execute(sl)
    back = read_volume(tmp_path)
    assert back.shape == vol.shape
    assert np.array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-4)
    np.testing.assert_allclose(back.direction, OBLIQUE, atol=1e-4)


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="must be 3D"):
        Volume(np.zeros((4, 4)))
    with pytest.raises(InputError, match="must be 3D"):
        Volume(np.zeros((2, 3, 4, 4)))
    with pytest.raises(InputError, match="spacing"):
        Volume(np.zeros((2, 3, 4)), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        Volume(np.zeros((2, 3, 4)), spacing=(1.0, -1.0, 1.0))
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_volume(empty)
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read"):
        read_volume(junk)
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    image4d = sitk.JoinSeries([sitk.Image(4, 4, 4, sitk.sitkInt16)] * 2)
    sitk.WriteImage(image4d, str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match="3D"):
        read_volume(tmp_path / "t.nii.gz")


def test_non_ct_range_warns(tmp_path, caplog):
    path = tmp_path / "unit.nii.gz"
    sitk.WriteImage(Volume(np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)).to_sitk(), str(path))
    with caplog.at_level(logging.WARNING):
        read_volume(path)
    assert "Hounsfield" in caplog.text


def test_windowing_presets_and_custom():
    hu = np.array([-2000.0, -160.0, 40.0, 240.0, 3000.0])
    np.testing.assert_allclose(apply_window(hu, "abdomen"), [0.0, 0.0, 0.5, 1.0, 1.0])
    assert get_window("40,400") == PRESETS["abdomen"]
    assert set(PRESETS) >= {"abdomen", "bone", "lung", "brain"}
    with pytest.raises(InputError, match="level,width"):
        get_window("forty,400")
    with pytest.raises(InputError, match="width"):
        get_window((40, 0))


@pytest.mark.parametrize("name", ["mask.nii.gz", "mask.seg.nrrd"])
def test_write_mask_keeps_geometry(tmp_path, name):
    vol = ct_volume()
    mask = (vol.array > 500).astype(np.uint8)
    path = write_mask(mask, vol, tmp_path / name, {1: "liver"})
    back = Volume.from_sitk(sitk.ReadImage(str(path)))
    assert np.array_equal(back.array, mask)
    np.testing.assert_allclose(back.ijk_to_lps(), vol.ijk_to_lps(), atol=1e-5)
    if name.endswith(".seg.nrrd"):
        assert sitk.ReadImage(str(path)).GetMetaData("Segment0_Name") == "liver"
    with pytest.raises(InputError, match="differs"):
        write_mask(mask[:-1], vol, tmp_path / "bad.nii.gz")


def test_label_map_numbers_masks_in_order_and_the_first_wins_overlaps():
    from medvlsam2.results import label_map

    a = np.zeros((2, 3, 3), np.uint8)
    b = np.zeros_like(a)
    a[0, :2] = 1
    b[0, 1:] = 1
    labels = label_map([a, b])
    assert labels.dtype == np.uint8
    assert labels[0].tolist() == [[1, 1, 1], [1, 1, 1], [2, 2, 2]] and not labels[1].any()


def test_terminology_uses_slicers_general_anatomy_codes_with_side_and_region():
    from medvlsam2.io.terminology import CONTEXT, terminology

    def parts(name):
        tags, colour = terminology(name, 3)
        assert tags.startswith(f"TerminologyEntry:{CONTEXT}~") and tags.endswith("|")
        return tags[len("TerminologyEntry:"):-1].split("~")[1:], colour

    # an organ's side is Slicer's laterality type modifier (Kidney + Left), not a separate "Left kidney" code
    assert parts("the LEFT kidney") == (["SCT^123037004^Anatomical Structure", "SCT^64033007^Kidney", "SCT^7771000^Left",
                                         "Anatomic codes - DICOM master list", "^^", "^^"], (185, 102, 83))
    assert parts("right lung")[0][1:3] == ["SCT^39607008^Lung", "SCT^24028007^Right"]
    assert parts("liver")[0][2] == "^^"  # unsided organs take no side
    # a finding is a morphologically altered structure; the organ it lies in is its anatomic region
    assert parts("cyst in the right kidney")[0] == ["SCT^49755003^Morphologically Altered Structure",
                                                    "SCT^367643001^Cyst", "^^", "Anatomic codes - DICOM master list",
                                                    "SCT^64033007^Kidney", "SCT^24028007^Right"]
    assert parts("hepatic tumour")[0][1] == "SCT^4147007^Mass" and parts("hepatic tumour")[0][4] == "SCT^10200004^Liver"
    # unknown names (and parts of words) get Slicer's generic Tissue and the palette colour of their index
    tissue, colour = parts("liverish blob")
    assert tissue[:2] == ["SCT^85756007^Tissue"] * 2 and colour != terminology("liverish blob", 4)[1]
