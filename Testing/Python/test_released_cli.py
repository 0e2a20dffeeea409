"""``medvlsam2 segment``/``batch`` on random-weight SegVol and M3D-LaMed folders in the published layout: exit 0,
the mask in the input's exact geometry (LPS, RAS, oblique), the family's not-found reason when it finds nothing.
The M3D-LaMed folder is the taught tiny one (it answers "liver" with [SEG] and "spleen" with "Sorry, there is no
spleen."); the decoders' answers are replaced (every voxel of the decoded window, or none) so that the geometry
checks mean something; everything around them (preprocessing, text and language towers, paste back into the
input grid, Session, CLI, file writing) is the real path."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from released_folders import phantom, write_m3d_folder, write_segvol_folder

from medvlsam2 import factory
from medvlsam2.cli import main
from medvlsam2.io.volume import read_volume
from medvlsam2.released.seg_decoder import SegModules

DIRECTIONS = {"lps": np.eye(3), "ras": np.diag([-1.0, -1.0, 1.0]),
              "oblique": np.array([[0.955, -0.296, 0.0], [0.296, 0.955, 0.0], [0.0, 0.0, 1.0]])}


pytestmark = pytest.mark.usefixtures("without_priors")  # random-weight masks are not anatomy


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("released-cli")
    return {"segvol": write_segvol_folder(root / "SegVol"), "m3d": write_m3d_folder(root / "M3D-LaMed-Phi-3-4B", taught=True)}


@pytest.fixture
def decoder(monkeypatch):
    """Set what the SAM-style 3D decoder answers: +1 (every voxel of its window) or -1 (nothing)."""
    def answer(sign: float):
        monkeypatch.setattr(SegModules, "decode",
                            lambda self, emb, text: sign * torch.ones(1, 1, *self.cfg.vit.image_size))
    answer(1.0)
    return answer


def write(volume, path):
    sitk.WriteImage(volume.to_sitk(), str(path))
    return path


@pytest.mark.parametrize("family", ["segvol", "m3d"])
@pytest.mark.parametrize("geometry", sorted(DIRECTIONS))
def test_segment_exits_0_with_the_inputs_exact_geometry(folders, decoder, tmp_path, family, geometry):
    image = write(phantom(DIRECTIONS[geometry]), tmp_path / "ct.nii.gz")
    out = tmp_path / "liver.nii.gz"
    assert main(["segment", str(image), "--model", str(folders[family]), "--prompt", "liver", "-o", str(out)]) == 0
    mask, source = read_volume(out), read_volume(image)
    assert mask.shape == source.shape and np.allclose(mask.spacing, source.spacing)
    assert np.allclose(mask.origin, source.origin) and np.allclose(mask.direction, source.direction, atol=1e-6)
    assert mask.array[3:15, 8:34, 6:30].all()  # the body box the phantom holds, in the input's own grid
    assert not mask.array[:2].any()  # nothing in the air slices above it


def test_batch_and_not_found(folders, decoder, tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    write(phantom(DIRECTIONS["oblique"]), cases / "a.nii.gz")
    assert main(["batch", str(cases), "--model", str(folders["segvol"]), "--prompt", "liver",
                 "-o", str(tmp_path / "out")]) == 0
    assert read_volume(tmp_path / "out" / "a" / "mask.nii.gz").array.any()
    decoder(-1.0)
    out = tmp_path / "none.nii.gz"
    assert main(["segment", str(cases / "a.nii.gz"), "--model", str(folders["segvol"]), "--prompt", "spleen",
                 "-o", str(out)]) == 3
    assert "SegVol's mask for it is empty" in capsys.readouterr().err and not read_volume(out).array.any()
    decoder(1.0)
    assert main(["segment", str(cases / "a.nii.gz"), "--model", str(folders["m3d"]), "--prompt", "spleen",
                 "-o", str(out)]) == 3
    assert "Sorry, there is no spleen." in capsys.readouterr().err and not read_volume(out).array.any()


def test_a_recipe_refines_an_m3d_text_mask_with_a_sam2_click_and_undoes_it_exactly(folders, decoder, tmp_path):
    from official_sam2 import write_official_checkpoint

    from medvlsam2.session import Session

    sam2 = write_official_checkpoint(tmp_path / "sam2.1_hiera_tiny_random.pt")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"text_segmenter: {folders['m3d']}\nsegmenter: {sam2}\nimage_size: 128\n")
    with Session(factory.load_model(str(recipe)), phantom(DIRECTIONS["oblique"])) as session:
        result = session.segment_text("liver")
        obj = result.found[0].object_id
        typed = session.mask(obj)
        assert typed[3:15, 8:34, 6:30].all()
        session.add_points(obj, [[20, 20, 8]], [-1])
        assert not np.array_equal(session.mask(obj), typed)
        session.undo(obj)
        assert np.array_equal(session.mask(obj), typed)
