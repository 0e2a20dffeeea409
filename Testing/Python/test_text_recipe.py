"""A recipe that types with a released text segmenter (VoxTell, tiny random weights) and clicks with SAM2: the text
mask seeds a SAM2 object that clicks refine and undo restores exactly; without SAM2 the object takes no clicks;
an empty mask is a NotFound; the CLI's segment and batch serve a VoxTell folder."""

import shutil

import numpy as np
import pytest

pytest.importorskip("voxtell", reason="VoxTell needs the voxtell extra: pip install 'medvlsam2[voxtell]'")

from official_sam2 import write_ct, write_official_checkpoint  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from voxtell_folder import write_voxtell_folder  # noqa: E402

from medvlsam2.capabilities import INTERACTIVE, TEXT_SEGMENTATION  # noqa: E402
from medvlsam2.cli import main  # noqa: E402
from medvlsam2.errors import CapabilityError, InputError  # noqa: E402
from medvlsam2.factory import describe, load_model  # noqa: E402
from medvlsam2.io.volume import read_volume  # noqa: E402
from medvlsam2.released.voxtell import CONVERTED  # noqa: E402
from medvlsam2.results import NotFound  # noqa: E402
from medvlsam2.session import Session  # noqa: E402

SIZE = 128  # SAM2 input size in tests


pytestmark = pytest.mark.usefixtures("without_priors")  # random-weight masks are not anatomy


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    vox = write_voxtell_folder(root / "voxtell_v1.1")
    quiet = root / "quiet" / "voxtell_v1.1"  # a folder whose masks are empty: the final mask embedding is zero
    shutil.copytree(vox, quiet)
    sd = load_file(quiet / CONVERTED)
    for name in ("project_to_decoder_channels.0.2.weight", "project_to_decoder_channels.0.2.bias"):
        sd[name] = sd[name] * 0
    save_file(sd, str(quiet / CONVERTED))
    sam2 = write_official_checkpoint(root / "sam2.1_hiera_tiny_random.pt")
    recipe = root / "typed_and_clicked.yaml"
    recipe.write_text(f"text_segmenter: voxtell_v1.1\nsegmenter: {sam2.name}\nimage_size: {SIZE}\n")
    return {"vox": vox, "quiet": quiet, "recipe": recipe, "ct": write_ct(root / "ct.nii.gz", shape=(6, 12, 12))}


def test_the_recipe_describes_and_loads_both_parts(files):
    info = describe(str(files["recipe"]))
    assert info.kind == "recipe" and info.capabilities == {INTERACTIVE, TEXT_SEGMENTATION}
    assert info.provenance == "random"  # the least trustworthy part: the random VoxTell folder
    model = load_model(str(files["recipe"]))
    assert model.capabilities == info.capabilities and model.provenance == "random"
    assert model.text_segmenter.kind == "voxtell" and model.segmenter.image_size == SIZE


def test_a_text_mask_seeds_a_sam2_object_that_a_click_refines_and_undo_restores(files):
    model = load_model(str(files["recipe"]))
    volume = read_volume(files["ct"])
    expected = model.text_segmenter.segment_target(volume, "liver").mask
    assert expected is not None and expected.any()
    with Session(model, volume) as session:
        result = session.segment_text("liver")
        assert result.not_found == [] and len(result.found) == 1
        obj = result.found[0].object_id
        assert session.objects() == {obj: "liver"} and np.array_equal(session.mask(obj), expected)
        k = int(np.argmax(expected.sum(axis=(1, 2))))
        j, i = (int(v) for v in np.argwhere(expected[k])[0])
        clicked = session.add_points(obj, [[i, j, k]], [-1])
        after = session.mask(obj)
        assert (clicked.bbox[0], clicked.bbox[1]) == (k, k + 1) and not np.array_equal(after, expected)
        others = [s for s in range(volume.shape[0]) if s != k]
        assert np.array_equal(after[others], expected[others])  # a click changes its own slice only
        session.undo(obj)
        assert np.array_equal(session.mask(obj), expected)  # exactly the text mask again
        session.redo(obj)
        assert np.array_equal(session.mask(obj), after)
        session.undo(obj)
        session.undo(obj)  # the text step itself
        assert not session.mask(obj).any()


def test_without_sam2_the_object_takes_no_clicks(files):
    model = load_model(str(files["vox"]))
    volume = read_volume(files["ct"])
    with Session(model, volume) as session:
        obj = session.segment_text("liver").found[0].object_id
        assert np.array_equal(session.mask(obj), model.segment_target(volume, "liver").mask)
        with pytest.raises(CapabilityError, match="cannot segment from clicks or boxes"):
            session.add_points(obj, [[1, 1, 1]], [1])
        with pytest.raises(CapabilityError, match="cannot segment from clicks or boxes"):
            session.propagate(obj)
        session.undo(obj)
        assert not session.mask(obj).any()


def test_an_empty_mask_is_a_not_found_with_the_reason_and_no_object(files, tmp_path):
    recipe = tmp_path / "quiet.yaml"
    recipe.write_text(f"text_segmenter: {files['quiet']}\nsegmenter: {files['recipe'].parent / 'sam2.1_hiera_tiny_random.pt'}"
                      f"\nimage_size: {SIZE}\n")
    with Session(load_model(str(recipe)), read_volume(files["ct"])) as session:
        result = session.segment_text("liver and spleen")
        assert result.found == [] and session.objects() == {}
        assert result.not_found == [NotFound("liver", "VoxTell's mask for it is empty"),
                                    NotFound("spleen", "VoxTell's mask for it is empty")]
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"text_segmenter: {files['recipe'].parent / 'sam2.1_hiera_tiny_random.pt'}\n")
    with pytest.raises(InputError, match="the recipe's text_segmenter .* is not a released text segmenter"):
        load_model(str(bad))


def test_cli_segment_and_batch_on_a_voxtell_folder(files, tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(files["ct"]), "--model", str(files["vox"]), "--prompt", "liver", "-o", str(out)]) == 0
    assert read_volume(out).shape == read_volume(files["ct"]).shape
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(files["ct"], cases / "a.nii.gz")
    assert main(["batch", str(cases), "--model", str(files["recipe"]), "--prompt", "liver", "-o", str(tmp_path / "o")]) == 0
    mask = read_volume(tmp_path / "o" / "a" / "mask.nii.gz")
    assert mask.shape == read_volume(files["ct"]).shape and mask.array.any()
    assert main(["segment", str(files["ct"]), "--model", str(files["quiet"]), "--prompt", "liver", "-o", str(out)]) == 3
    assert "VoxTell's mask for it is empty" in capsys.readouterr().err
