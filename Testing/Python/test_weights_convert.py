"""``weights convert``: released pickles (SegVol's pytorch_model.bin, VoxTell's nnU-Net checkpoint_final.pth,
made here in their published layouts) become .safetensors with a sha256 record; hostile pickles are refused
and nothing is written."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medvlsam2.cli import main
from medvlsam2.convert import convert
from medvlsam2.errors import CheckpointError, InputError


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def segvol_state() -> dict:
    """A few tensors under SegVol's published names (a flat dict of tensors, as ``pytorch_model.bin`` is)."""
    g = torch.Generator().manual_seed(0)
    return {"model.image_encoder.patch_embedding.patch_embeddings.1.weight": torch.randn(768, 4096, generator=g),
            "model.mask_decoder.iou_prediction_head.layers.0.bias": torch.randn(256, generator=g),
            "model.text_encoder.dim_align.weight": torch.randn(768, 512, generator=g)}


def nnunet_checkpoint(weights: dict) -> dict:
    """What nnU-Net's ``nnUNetTrainer.save_checkpoint`` writes (VoxTell's trainer subclasses it): weights plus
    optimizer state, a training log with numpy float64 values, init args holding a torch.device."""
    return {"network_weights": weights,
            "optimizer_state": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                                "param_groups": [{"lr": 0.01, "momentum": 0.99, "params": [0]}]},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.61), np.float64(0.7)], "ema_fg_dice": [0.6, 0.65],
                        "lrs": [0.01, 0.0099], "epoch_end_timestamps": [1.0, 2.0]},
            "_best_ema": np.float64(0.65), "current_epoch": 1000,
            "init_args": {"plans": {"plans_name": "nnUNetResEncUNetLPlans"}, "configuration": "3d_fullres", "fold": 0,
                          "dataset_json": {"labels": {"background": 0}}, "device": torch.device("cpu")},
            "trainer_name": "VoxTellTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)}


class Boom:
    """A hostile pickle: unpickling it would run code that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def nothing_written(folder, stem):
    return not [p for p in folder.iterdir() if p.name.startswith(stem) and p.suffix != ".bin" and p.suffix != ".pth"]


@pytest.mark.parametrize("zipped", [True, False])
def test_segvol_bin_converts_to_identical_safetensors_with_sha256_record(tmp_path, zipped):
    src = tmp_path / "pytorch_model.bin"
    state = segvol_state()
    state["model.tied.weight"] = state["model.text_encoder.dim_align.weight"]  # shared storage is written twice
    torch.save(state, src, _use_new_zipfile_serialization=zipped)
    record = convert(src)
    out = tmp_path / "model.safetensors"  # Hugging Face's name for pytorch_model.bin's weights
    loaded = load_file(out)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert record["kept"] is None and record["tensors"] == 4 and record["dropped"] == {}
    assert record["sha256"] == sha(out) and record["source_sha256"] == sha(src)
    assert json.loads((tmp_path / "model.safetensors.json").read_text()) == record


def test_voxtell_nnunet_checkpoint_keeps_network_weights_and_records_scalars(tmp_path):
    fold = tmp_path / "fold_0"
    fold.mkdir()
    weights = {"encoder.stem.convs.0.conv.weight": torch.randn(32, 1, 3, 3, 3), "pos_embed": torch.randn(8, 1, 4)}
    torch.save(nnunet_checkpoint(weights), fold / "checkpoint_final.pth")
    record = convert(fold / "checkpoint_final.pth")
    loaded = load_file(fold / "checkpoint_final.safetensors")
    assert set(loaded) == set(weights) and all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert record["kept"] == "network_weights"
    assert record["scalars"] == {"_best_ema": 0.65, "current_epoch": 1000, "trainer_name": "VoxTellTrainer"}
    assert set(record["dropped"]) == {"optimizer_state", "grad_scaler_state", "logging", "init_args",
                                      "inference_allowed_mirroring_axes"}
    assert record["dropped"]["optimizer_state"] == "dict with 1 tensor(s)"
    assert record["sha256"] == sha(fold / "checkpoint_final.safetensors")


def test_a_pickled_object_is_refused_unexecuted_and_nothing_is_written(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.zeros(2)}, "hook": Boom(marker)}, src)
    with pytest.raises(CheckpointError, match=r"refused checkpoint_final\.pth: it holds a .*makedirs.*nothing was written"):
        convert(src)
    assert not marker.exists()
    assert nothing_written(tmp_path, "checkpoint_final")


def test_numpy_arrays_and_object_scalars_are_refused(tmp_path):
    src = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "stats": np.zeros(3)}, src)
    with pytest.raises(CheckpointError, match="refused model.pth: it holds a .*_reconstruct"):
        convert(src)
    assert nothing_written(tmp_path, "model")


def _truncated(path):
    torch.save(segvol_state(), path)
    path.write_bytes(path.read_bytes()[:5000])


REFUSED = {  # file name -> (how it is made, error, message)
    "notes.pth": (lambda p: torch.save({"epoch": 3, "name": "x"}, p), CheckpointError, "holds no state dict"),
    "junk.bin": (lambda p: p.write_bytes(b"not a pickle at all"), CheckpointError, "refused junk.bin"),
    "cut.bin": (_truncated, CheckpointError, "refused cut.bin"),
    "missing.bin": (lambda p: None, InputError, "no such file"),
    "m.safetensors": (lambda p: p.write_bytes(b"x"), InputError, "needs no conversion"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_is_not_a_checkpoint_is_refused_and_nothing_written(tmp_path, name):
    make, error, message = REFUSED[name]
    make(tmp_path / name)
    with pytest.raises(error, match=message):
        convert(tmp_path / name)
    assert not list(tmp_path.glob("*.safetensors*")) or name == "m.safetensors"


def test_the_output_must_be_a_new_safetensors_file(tmp_path):
    src = tmp_path / "m.bin"
    torch.save(segvol_state(), src)
    with pytest.raises(InputError, match="must be a new .safetensors"):
        convert(src, tmp_path / "m.pt")


def test_cli_convert(tmp_path, capsys):
    src = tmp_path / "pytorch_model.bin"
    torch.save(segvol_state(), src)
    out = tmp_path / "segvol" / "model.safetensors"
    assert main(["weights", "convert", str(src), "-o", str(out)]) == 0
    assert f"sha256={sha(out)}" in capsys.readouterr().out
    hostile = tmp_path / "evil.pth"
    torch.save(Boom(tmp_path / "pwned"), hostile)
    assert main(["weights", "convert", str(hostile)]) == 1
    assert "refused evil.pth" in capsys.readouterr().err and not (tmp_path / "pwned").exists()


def test_weights_import_of_a_segvol_release_converts_its_pickle_and_checks_every_tensor(tmp_path, monkeypatch):
    from released_folders import write_segvol_folder

    from medvlsam2 import weights

    monkeypatch.setenv("MEDVLSAM2_HOME", str(tmp_path / "home"))
    release = write_segvol_folder(tmp_path / "SegVol")  # then made what BAAI/SegVol ships: pytorch_model.bin
    torch.save(load_file(release / "model.safetensors"), release / "pytorch_model.bin")
    (release / "model.safetensors").unlink()
    installed = weights.import_file("segvol", release)
    assert (installed / "model.safetensors").is_file() and not (installed / "pytorch_model.bin").exists()
    assert json.loads((installed / "model.safetensors.json").read_text())["source"] == "pytorch_model.bin"
    weights.verify_file(weights.load_manifest()["segvol"], installed)
    state = load_file(installed / "model.safetensors")
    state.popitem()
    torch.save(state, release / "pytorch_model.bin")
    with pytest.raises(CheckpointError):
        weights.import_file("segvol", release)
    assert (installed / "model.safetensors").is_file()  # the installed copy is kept
