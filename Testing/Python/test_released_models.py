"""Released models through every surface: an official-format SAM2.1 hiera-t checkpoint (random weights,
built here from the sam2 package's own config) loaded by the factory, the CLI, the weights manager and
the server; capabilities refuse what a model cannot do; recipes combine parts; the domain warning."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

from official_sam2 import SMALL, write_ct, write_official_checkpoint  # noqa: E402

from medvlsam2.capabilities import INTERACTIVE, LANGUAGE, TEXT_SEGMENTATION  # noqa: E402
from medvlsam2.cli import main  # noqa: E402
from medvlsam2.cli.segment import DOUBTFUL  # noqa: E402
from medvlsam2.errors import CapabilityError, CheckpointError, InputError  # noqa: E402
from medvlsam2.factory import describe, load_model  # noqa: E402

SIZE = "128"  # SAM2 input size in tests (the default stays native: 512 for MedSAM2, 1024 for SAM2.1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    return {"tiny": write_official_checkpoint(root / "sam2.1_hiera_tiny_random.pt"),
            "ct": write_ct(root / "ct.nii.gz"), "root": root}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLSAM2_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _read(path):
    import SimpleITK as sitk

    return sitk.ReadImage(str(path))


def test_segment_a_ct_with_an_official_checkpoint_file_and_a_click(files, tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    code = main(["segment", str(files["ct"]), "--model", str(files["tiny"]), "--image-size", SIZE,
                 "--point", "32,32,4,+", "-o", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "released SAM2 segmenter" in err and "hiera-t" in err and "can do: interactive" in err
    ct, mask = _read(files["ct"]), _read(out)
    assert mask.GetSize() == ct.GetSize() and np.allclose(mask.GetSpacing(), ct.GetSpacing())
    assert np.allclose(mask.GetOrigin(), ct.GetOrigin()) and np.allclose(mask.GetDirection(), ct.GetDirection())
    import SimpleITK as sitk

    assert sitk.GetArrayFromImage(mask).sum() > 0


def test_import_then_segment_by_manifest_name_with_a_box(files, home, tmp_path, capsys):
    assert main(["weights", "path", "medsam2-latest"]) == 1  # not installed yet: non-zero, says how to install
    assert "weights import medsam2-latest" in capsys.readouterr().err
    assert main(["weights", "import", "medsam2-latest", str(files["tiny"])]) == 0
    assert main(["weights", "path", "medsam2-latest"]) == 0
    assert capsys.readouterr().out.strip().endswith("MedSAM2_latest.pt")
    assert main(["weights", "verify", "medsam2-latest"]) == 0 and "ok medsam2-latest" in capsys.readouterr().out

    info = describe("medsam2-latest")
    assert (info.kind, info.capabilities, info.provenance, info.image_size) == \
        ("segmenter", frozenset({INTERACTIVE}), "released", 512)  # MedSAM2's native size
    out = tmp_path / "box.nii.gz"
    code = main(["segment", str(files["ct"]), "--model", "medsam2-latest", "--image-size", SIZE,
                 "--box", "20,20,2,44,44,6", "-o", str(out), "--device", "cpu"])
    assert code in (0, DOUBTFUL), capsys.readouterr().err  # random weights may fill the box: "box may be too small"
    import SimpleITK as sitk

    assert sitk.GetArrayFromImage(_read(out)).sum() > 0


def test_import_refuses_a_text_file_and_a_hiera_s_file(files, home, capsys):
    text = files["root"] / "not_weights.pt"
    text.write_text("hello\n")
    assert main(["weights", "import", "medsam2-latest", str(text)]) == 1
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
    small = write_official_checkpoint(files["root"] / "sam2.1_hiera_small_random.pt", SMALL)
    assert main(["weights", "import", "medsam2-latest", str(small)]) == 1
    assert "hiera-s checkpoint, but medsam2-latest is hiera-t" in capsys.readouterr().err
    assert not (home / "weights" / "MedSAM2_latest.pt").exists()
    assert main(["weights", "import", "sam2.1-hiera-small", str(small)]) == 0  # the right entry takes it
    small.unlink()


def test_a_text_prompt_on_a_segmenter_only_model_names_the_missing_capability(files, tmp_path, capsys):
    code = main(["segment", str(files["ct"]), "--model", str(files["tiny"]), "--image-size", SIZE,
                 "--prompt", "liver", "-o", str(tmp_path / "m.nii.gz"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "text_segmentation" in err and "MedVL-SAM2 bundle" in err
    assert "Traceback" not in err and not (tmp_path / "m.nii.gz").exists()
    code = main(["ask", str(files["ct"]), "what is this?", "--model", str(files["tiny"]), "--image-size", SIZE])
    assert code == 1 and "'language' capability" in capsys.readouterr().err


def test_an_empty_result_says_so_and_exits_3(files, tmp_path, capsys, monkeypatch):
    from medvlsam2.session import Session

    monkeypatch.setattr(Session, "mask", lambda self, obj: np.zeros(self.volume.shape, np.uint8))
    code = main(["segment", str(files["ct"]), "--model", str(files["tiny"]), "--image-size", SIZE,
                 "--point", "32,32,4,+", "--no-propagate", "-o", str(tmp_path / "m.nii.gz"), "--device", "cpu"])
    assert code == 3 and "no voxels found" in capsys.readouterr().err


def test_architecture_and_native_size_come_from_the_file(files, tmp_path):
    model = load_model(str(files["tiny"]))  # bare SAM2.1 file: native 1024 px, no encoder, no LLM
    assert model.segmenter.image_size == 1024 and model.capabilities == frozenset({INTERACTIVE})
    assert model.provenance == "released" and not hasattr(model, "llm") and not hasattr(model, "vision_encoder")
    assert model.segmenter.add_all_frames_to_correct_as_cond  # the engine's documented default
    medsam = tmp_path / "MedSAM2_latest.pt"
    os.link(files["tiny"], medsam)
    assert load_model(str(medsam)).segmenter.image_size == 512  # the manifest's file name: MedSAM2's size
    assert load_model(str(medsam), image_size=256).segmenter.image_size == 256
    with pytest.raises(InputError, match="multiple of 16"):
        load_model(str(medsam), image_size=100)
    bad = tmp_path / "weights.pt"
    import torch

    torch.save({"model": {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(80, 3, 7, 7)}}, bad)
    with pytest.raises(CheckpointError, match="width 80"):
        load_model(str(bad))


def test_bundles_and_named_configs_report_capabilities_and_provenance():
    demo = describe(str(__import__("medvlsam2.resources").resources.resource_path("DemoWeights")))
    assert demo.kind == "bundle" and demo.provenance == "phantom-trained"
    assert demo.capabilities == frozenset({INTERACTIVE, TEXT_SEGMENTATION, LANGUAGE})
    tiny = load_model("tiny")
    assert tiny.provenance == "random" and tiny.capabilities == demo.capabilities
    with pytest.raises(InputError, match="unknown model 'nope'.*medsam2-latest"):
        describe("nope")


def test_a_recipe_combines_a_segmenter_and_a_language_part(files, tmp_path):
    from medvlsam2.io.volume import read_volume
    from medvlsam2.session import Session

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"segmenter: {files['tiny']}\nlanguage: tiny\nimage_size: {SIZE}\n")
    info = describe(str(recipe))
    assert info.capabilities == frozenset({INTERACTIVE, LANGUAGE}) and info.provenance == "random"
    model = load_model(str(recipe))
    assert model.capabilities == info.capabilities and model.segmenter.image_size == int(SIZE)
    session = Session(model, read_volume(files["ct"]))
    obj = session.add_object()
    assert session.add_points(obj, [[32, 32, 4]], [1]).patch.sum() > 0
    assert "".join(session.ask("what is this?"))  # the language part answers (random weights: any text)
    with pytest.raises(CapabilityError, match="text_segmentation"):
        session.segment_text("liver")
    (tmp_path / "bad.yaml").write_text("segmenter: x\nllm: y\n")
    with pytest.raises(InputError, match="unknown key"):
        describe(str(tmp_path / "bad.yaml"))


def test_serve_an_official_checkpoint_and_drive_it_with_the_client(files):
    from medvlsam2.client import Client
    from medvlsam2.io.volume import read_volume
    from medvlsam2.server.launcher import launch_server

    srv = launch_server(model=str(files["tiny"]), device="cpu", extra_args=["--image-size", SIZE])
    try:
        client = Client(srv.url, srv.token, timeout=120)
        info = client.version()
        assert info["capabilities"] == [INTERACTIVE] and info["provenance"] == "released"
        assert client.capabilities == frozenset({INTERACTIVE})
        session = client.open_session(read_volume(files["ct"]))
        assert session.capabilities == frozenset({INTERACTIVE})
        obj = session.add_object()
        assert session.add_points(obj, [[32, 32, 4]], [1]).patch.sum() > 0
        with pytest.raises(CapabilityError, match="text_segmentation"):
            session.segment_text("liver")
        with pytest.raises(CapabilityError, match="language"):
            "".join(session.ask("what is this?"))
        assert session.mask(obj).sum() > 0  # the refused calls left the object as it was
        session.close()
        client.close()
    finally:
        srv.stop()


def test_the_domain_warning_fires_for_a_head_ct_not_for_a_phantom():
    import inspect

    from medvlsam2 import domain
    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.io.volume import Volume

    defaults = inspect.signature(generate_case).parameters
    assert defaults["shape"].default == domain.PHANTOM_SHAPE and defaults["spacing"].default == domain.PHANTOM_SPACING

    class Model:
        provenance = "phantom-trained"

    phantom = generate_case(3).volume
    assert domain.check_volume(Model(), phantom) == []
    rng = np.random.default_rng(0)
    head = rng.normal(30, 20, (108, 256, 256)).astype(np.int16)
    head[:, :, :20] = -1000
    head[:, 100:110] = 1800  # skull
    reasons = domain.check_volume(Model(), Volume(head, (0.957, 0.957, 1.5), (0.0, 0.0, 0.0)))
    assert any("voxel spacing" in r for r in reasons) and any("above 1000 HU" in r for r in reasons)
    assert "medsam2-latest" in domain.domain_warning(Model(), Volume(head, (0.957, 0.957, 1.5), (0.0, 0.0, 0.0)))
    Model.provenance = "released"
    assert domain.check_volume(Model(), Volume(head, (0.957, 0.957, 1.5), (0.0, 0.0, 0.0))) == []
