"""VoxTell through the ``voxtell`` package: a random-weight folder in the published layout (nnU-Net plans.json,
fold_0/checkpoint_final.pth converted to safetensors, embedding bank, Qwen3 text encoder), loaded strictly,
refused when wrong, reoriented exactly as nnU-Net's reader does, identical to upstream's predictor, and served
by the factory, the weights manager and ``medvlsam2 segment``."""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("voxtell", reason="VoxTell needs the voxtell extra: pip install 'medvlsam2[voxtell]'")

from safetensors.torch import load_file, save_file  # noqa: E402
from voxtell_folder import BANK_PROMPTS, HYPER, write_voxtell_folder  # noqa: E402

from medvlsam2 import factory, weights  # noqa: E402
from medvlsam2.capabilities import TEXT_SEGMENTATION  # noqa: E402
from medvlsam2.cli import main  # noqa: E402
from medvlsam2.errors import Cancelled, CheckpointError, InputError  # noqa: E402
from medvlsam2.io.volume import Volume, read_volume  # noqa: E402
from medvlsam2.released import TextSegmenter  # noqa: E402
from medvlsam2.released.voxtell import (CONVERTED, VoxTell, from_ras, hyperparameters,  # noqa: E402
                                        safetensors_header, to_ras)
from medvlsam2.utils.cancel import CancelToken  # noqa: E402

ROTATION = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])  # oblique: 16 degrees about z
GEOMETRIES = {"lps": np.eye(3), "ras": np.diag([-1.0, -1.0, 1.0]), "oblique": ROTATION @ np.diag([1.0, -1.0, 1.0]),
              "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])}


pytestmark = pytest.mark.usefixtures("without_priors")  # random-weight masks are not anatomy


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_voxtell_folder(tmp_path_factory.mktemp("vox") / "voxtell_v1.1", keep_pth=True)


@pytest.fixture(scope="module")
def voxtell(folder):
    return VoxTell(folder)


def write_volume(volume: Volume, path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(volume.to_sitk(), str(path))


def ct(direction=np.eye(3), shape=(7, 9, 8), seed=0) -> Volume:
    """A small CT: air around a body with two organs of different density."""
    rng = np.random.default_rng(seed)
    a = np.full(shape, -1000, np.int16)
    a[1:-1, 2:-2, 1:-1] = rng.normal(40, 20, (shape[0] - 2, shape[1] - 4, shape[2] - 2))
    a[2:5, 3:6, 2:4] = 180
    return Volume(a, (0.8, 0.9, 2.5), (-12.0, 30.0, 5.0), direction)


def test_hyperparameters_of_the_released_layout_are_upstreams_constants():
    """VoxTellPredictor hard-codes the text decoder; read from a checkpoint of its layout they come back exactly."""
    from voxtell.model.voxtell_model import VoxTellModel

    published = dict(decoder_layer=4, text_embedding_dim=2560, num_maskformer_stages=5, num_heads=32, query_dim=2048,
                     project_to_decoder_hidden_dim=2048)
    with torch.device("meta"):
        net = VoxTellModel(1, 6, [32, 64, 128, 256, 320, 320], torch.nn.Conv3d, 3, [1, 2, 2, 2, 2, 2], 1, 1,
                           deep_supervision=False, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU,
                           **published)
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert hyperparameters(shapes, VoxTellModel.DECODER_CONFIGS) == published
    assert len(shapes) == 2 * sum(1 for k in shapes if k.startswith("encoder.")) + \
        sum(1 for k in shapes if not k.startswith(("encoder.", "decoder.encoder.")))  # the encoder is listed twice


def test_folder_loads_strictly_and_is_a_text_segmenter(folder, voxtell):
    header = safetensors_header(folder / CONVERTED)
    assert json.loads((folder / "fold_0" / "checkpoint_final.safetensors.json").read_text())["kept"] == "network_weights"
    assert isinstance(voxtell, TextSegmenter) and voxtell.capabilities == {TEXT_SEGMENTATION}
    assert voxtell.provenance == "random" and voxtell.bank_size == len(BANK_PROMPTS) and voxtell.has_text_encoder
    own = voxtell._predictor.network.state_dict()
    assert set(own) == set(header) - {"__metadata__"}
    sd = load_file(folder / CONVERTED)
    assert all(torch.equal(own[k], sd[k]) for k in sd)
    info = factory.describe(str(folder))
    assert (info.kind, info.capabilities, info.provenance) == ("voxtell", {TEXT_SEGMENTATION}, "random")


@pytest.mark.parametrize("damage", ["missing", "shape", "truncated", "pickle_only"])
def test_a_wrong_or_truncated_folder_is_refused_naming_the_mismatch(folder, tmp_path, damage):
    bad = tmp_path / "voxtell_v1.1"
    shutil.copytree(folder, bad)
    target = bad / CONVERTED
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        match = "checkpoint_final.safetensors"
    elif damage == "pickle_only":
        target.unlink()
        match = r"convert it once with `medvlsam2 weights convert .*checkpoint_final.pth`"
    else:
        sd = load_file(folder / CONVERTED)
        key = "transformer_decoder.layers.0.linear1.weight"
        if damage == "missing":
            del sd[key]
            match = r"1 missing key\(s\), e.g. \['transformer_decoder.layers.0.linear1.weight'\]"
        else:
            sd[key] = torch.zeros(3, 16)
            match = r"shape mismatch.*transformer_decoder.layers.0.linear1.weight: file \(3, 16\) vs model \(2048, 16\)"
        save_file(sd, str(target))
    with pytest.raises(CheckpointError, match=match):
        VoxTell(bad)
    with pytest.raises(CheckpointError, match=match):
        factory.load_model(str(bad))


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_reorientation_is_nnunets_reader_and_inverts_exactly(tmp_path, geometry):
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

    volume = ct(GEOMETRIES[geometry])
    path = tmp_path / "ct.nii.gz"
    write_volume(volume, path)
    theirs, _ = NibabelIOWithReorient().read_images([str(path)])
    ours, ornt = to_ras(read_volume(path))
    assert ours.shape == theirs.shape[1:] and np.array_equal(ours, theirs[0])
    assert np.array_equal(from_ras(ours, ornt), volume.array)


@pytest.mark.parametrize("prompt", ["liver", "Contrast-enhancing lesion in the left lobe"])  # bank, then Qwen3
def test_masks_are_upstream_predictors_on_the_same_file(folder, voxtell, tmp_path, monkeypatch, prompt):
    """Upstream's VoxTellPredictor (its own __init__: it unpickles our test-made .pth) on the NIfTI file, against
    our wrapper on the Volume read from it: the same mask, voxel for voxel, in the file's own grid. Upstream's
    __init__ hard-codes the released text-decoder sizes; here they are the tiny folder's."""
    import functools

    import voxtell.inference.predictor as upstream_module
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient
    from voxtell.inference.predictor import VoxTellPredictor
    from voxtell.model.voxtell_model import VoxTellModel

    def tiny(*args, **kwargs):
        return VoxTellModel(*args, **{**kwargs, **HYPER})

    monkeypatch.setattr(upstream_module, "VoxTellModel", functools.wraps(VoxTellModel)(tiny))

    path = tmp_path / "ct.nii.gz"
    write_volume(ct(GEOMETRIES["oblique"], shape=(9, 8, 10), seed=3), path)
    upstream = VoxTellPredictor(str(folder), torch.device("cpu"), text_encoding_model=str(folder / "Qwen3-Embedding-4B"),
                                embedding_bank=str(folder / "text_embeddings.npz"))
    written = upstream.predict_from_files([str(path)], tmp_path / "out", [prompt])
    theirs, _ = NibabelIOWithReorient().read_seg(written[0])
    volume = read_volume(path)
    ours = voxtell.segment_target(volume, prompt)
    expected = from_ras(theirs[0].astype(np.uint8), to_ras(volume)[1])
    assert expected.any(), "the random weights should mark something for this check to mean anything"
    assert ours.found and ours.mask.shape == volume.shape and np.array_equal(ours.mask, expected)


def test_an_empty_mask_is_not_found_with_a_reason(folder, tmp_path):
    quiet = tmp_path / "voxtell_v1.1"
    shutil.copytree(folder, quiet)
    sd = load_file(quiet / CONVERTED)
    for name in ("project_to_decoder_channels.0.2.weight", "project_to_decoder_channels.0.2.bias"):
        sd[name] = torch.zeros_like(sd[name])  # the final einsum sees a zero mask embedding: logits 0, sigmoid 0.5
    save_file(sd, str(quiet / CONVERTED))
    result = VoxTell(quiet).segment_target(ct(), "spleen")
    assert not result.found and result.name == "spleen" and result.reason == "VoxTell's mask for it is empty"


def test_prompts_outside_the_bank_need_the_text_encoder_and_cancel_stops(folder, tmp_path):
    bank_only = tmp_path / "voxtell_v1.1"
    shutil.copytree(folder, bank_only, ignore=shutil.ignore_patterns("Qwen3-Embedding-4B"))
    model = VoxTell(bank_only)
    assert not model.has_text_encoder
    with pytest.raises(InputError, match=r"bank \(3 prompts\) has no entry .*weights download qwen3-embedding-4b"):
        model.segment_target(ct(), "pancreatic duct")
    assert model.segment_target(ct(), "  Left   Kidney ").name == "Left Kidney"  # the bank is looked up lower-cased

    class AfterTwoWindows(CancelToken):
        reads = 0

        @property
        def cancelled(self):
            self.reads += 1
            return self.reads > 2

    with pytest.raises(Cancelled):
        model.segment_target(ct(shape=(12, 12, 12)), "liver", cancel=AfterTwoWindows())
    with pytest.raises(InputError, match="1 to 1000 characters"):
        model.segment_target(ct(), "   ")


def test_weights_import_converts_the_pickle_and_installs_the_folder(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLSAM2_HOME", str(tmp_path / "home"))
    release = tmp_path / "release" / "voxtell_v1.1"  # as downloaded: the pickle only
    shutil.copytree(folder, release, ignore=shutil.ignore_patterns("checkpoint_final.safetensors*"))
    installed = weights.import_file("voxtell", release)
    assert installed == weights.installed_path("voxtell") and installed.name == "voxtell_v1.1"
    assert (installed / CONVERTED).is_file() and not (installed / "fold_0" / "checkpoint_final.pth").exists()
    assert (release / "fold_0" / "checkpoint_final.pth").is_file()  # the user's copy is left as it was
    assert factory.describe("voxtell").kind == "voxtell"
    broken = tmp_path / "broken" / "voxtell_v1.1"
    shutil.copytree(release, broken)
    (broken / "plans.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not VoxTell's nnU-Net plans"):
        weights.import_file("voxtell", broken)
    assert weights.installed_path("voxtell") == installed and (installed / CONVERTED).is_file()


@pytest.mark.parametrize("geometry", ["lps", "ras", "oblique"])
def test_cli_segment_keeps_the_inputs_exact_geometry(folder, tmp_path, geometry):
    volume = ct(GEOMETRIES[geometry], shape=(8, 9, 8), seed=1)
    image, out = tmp_path / "ct.nii.gz", tmp_path / "liver.nii.gz"
    write_volume(volume, image)
    assert main(["segment", str(image), "--model", str(folder), "--prompt", "liver", "-o", str(out)]) == 0
    mask, source = read_volume(out), read_volume(image)
    assert mask.shape == source.shape and np.allclose(mask.spacing, source.spacing)
    assert np.allclose(mask.origin, source.origin) and np.allclose(mask.direction, source.direction, atol=1e-6)
    expected = VoxTell(folder).segment_target(source, "liver").mask
    assert np.array_equal(mask.array > 0, expected > 0)


def test_download_fetches_the_model_and_bank_with_progress_converts_and_installs(folder, tmp_path, monkeypatch):
    """huggingface_hub is stood in for at its boundary: it lays out mrokuss/VoxTell's tree (the model folder with the
    pickle, the bank under embeddings/) for the entry's file patterns and drives the progress bar."""
    import huggingface_hub

    monkeypatch.setenv("MEDVLSAM2_HOME", str(tmp_path / "home"))
    calls = []

    def snapshot_download(repo_id, *, revision=None, local_dir=None, allow_patterns=None, tqdm_class=None, **_):
        calls.append((repo_id, allow_patterns))
        root = tmp_path / "staging-source"
        shutil.copytree(folder, root / "voxtell_v1.1", ignore=shutil.ignore_patterns(
            "checkpoint_final.safetensors*", "text_embeddings.npz", "Qwen3-Embedding-4B"))
        (root / "embeddings" / "voxtell_v1.1").mkdir(parents=True)
        shutil.copy(folder / "text_embeddings.npz", root / "embeddings" / "voxtell_v1.1")
        bar = tqdm_class(total=100, unit="B", disable=True)
        bar.update(60)
        bar.update(40)
        shutil.copytree(root, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    seen = []
    installed = weights.download("voxtell", progress=lambda done, total: seen.append((done, total)))
    assert calls == [("mrokuss/VoxTell", ["voxtell_v1.1/*", "embeddings/voxtell_v1.1/*"])]
    assert seen == [(60, 100), (100, 100)]
    assert installed == weights.installed_path("voxtell") and (installed / CONVERTED).is_file()
    model = factory.load_model("voxtell")
    assert model.bank_size == len(BANK_PROMPTS) and not model.has_text_encoder  # the bank at ../embeddings/
    assert weights.verify_file(weights.load_manifest()["voxtell"], installed) == "folder"


def test_serve_a_voxtell_folder_and_type_through_the_client(folder, voxtell):
    from medvlsam2.capabilities import INTERACTIVE
    from medvlsam2.client import Client
    from medvlsam2.errors import CapabilityError
    from medvlsam2.server.launcher import launch_server

    volume = ct(GEOMETRIES["oblique"], shape=(8, 9, 8), seed=2)
    srv = launch_server(model=str(folder), device="cpu")
    try:
        client = Client(srv.url, srv.token, timeout=300)
        assert client.capabilities == frozenset({TEXT_SEGMENTATION}) and client.version()["provenance"] == "random"
        session = client.open_session(volume)
        result = session.segment_text("liver", force=True)  # the server's priors withhold a random mask; force delivers it
        assert result.not_found == [] and len(result.found) == 1
        obj = result.found[0].object_id
        assert np.array_equal(session.mask(obj), voxtell.segment_target(volume, "liver").mask)
        with pytest.raises(CapabilityError, match=INTERACTIVE):
            session.add_points(obj, [[1, 1, 1]], [1])
        session.close()
        client.close()
    finally:
        srv.stop()
