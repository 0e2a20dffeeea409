"""Weights cache: verified downloads through huggingface_hub (mocked at its boundary: no network), cancel,
offline import of files and model folders, architecture checks, CLI."""

import hashlib
import json
from pathlib import Path

import pytest
from med3dvlm_folder import write_med3dvlm_folder

from medvlsam2 import weights
from medvlsam2.cli import main
from medvlsam2.errors import Cancelled, CheckpointError, InputError
from medvlsam2.utils.cancel import CancelToken

PAYLOAD = bytes(range(256)) * 12_000  # ~3 MB: several progress updates
CHUNK = 1 << 20


class FakeHub:
    """Stands in for huggingface_hub's download functions: writes into ``local_dir`` and drives ``tqdm_class``
    like the real ones (a byte bar updated per chunk). Records the calls."""

    def __init__(self, payload=PAYLOAD):
        self.payload, self.calls = payload, []

    def hf_hub_download(self, repo_id, filename, *, revision=None, local_dir=None, tqdm_class=None, **_):
        self.calls.append((repo_id, filename, revision))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm_class(total=len(self.payload), unit="B", disable=True)
        with open(target.with_suffix(".incomplete"), "wb") as out:
            for start in range(0, len(self.payload), CHUNK):
                block = self.payload[start:start + CHUNK]
                out.write(block)
                bar.update(len(block))
        bar.close()
        target.with_suffix(".incomplete").replace(target)
        return str(target)

    def snapshot_download(self, repo_id, *, revision=None, local_dir=None, tqdm_class=None, **_):
        self.calls.append((repo_id, None, revision))
        write_med3dvlm_folder(Path(local_dir))
        return str(local_dir)


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    return fake


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLSAM2_HOME", str(tmp_path / "home"))
    good = hashlib.sha256(PAYLOAD).hexdigest()
    return {
        "good": weights.WeightEntry("good", None, "w.pt", len(PAYLOAD), good, "Apache-2.0", repo="org/good",
                                    revision="abc123"),
        "bad": weights.WeightEntry("bad", None, "bad.pt", None, "0" * 64, "Apache-2.0", repo="org/bad"),
        "vlm": weights.WeightEntry("vlm", None, "VLM", None, None, "MIT", kind="med3dvlm", model_type="vlm_qwen",
                                   repo="org/vlm"),
    }


def test_download_goes_through_huggingface_hub_verifies_and_installs(manifest, hub):
    seen = []
    path = weights.download("good", progress=lambda done, total: seen.append((done, total)), manifest=manifest)
    assert path == weights.weight_path("good", manifest) and path.read_bytes() == PAYLOAD
    assert hub.calls == [("org/good", "w.pt", "abc123")]  # the pinned revision is passed on
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(seen) > 1


def test_cancel_stops_the_download_and_installs_nothing(manifest, hub):
    token = CancelToken()
    with pytest.raises(Cancelled):
        weights.download("good", progress=lambda done, total: token.cancel(), cancel=token, manifest=manifest)
    assert not weights.weight_path("good", manifest).exists()
    assert weights.download("good", manifest=manifest).read_bytes() == PAYLOAD  # a later call completes


def test_checksum_mismatch_is_rejected_and_nothing_installed(manifest, hub):
    with pytest.raises(CheckpointError, match="SHA-256"):
        weights.download("bad", manifest=manifest)
    final = weights.weight_path("bad", manifest)
    assert not final.exists() and not (weights.cache_dir() / ".download" / "bad" / "bad.pt").exists()


def test_a_hub_error_says_how_to_import_instead(manifest, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("could not connect to huggingface.co")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(CheckpointError, match="weights import good"):
        weights.download("good", manifest=manifest)


def test_med3dvlm_folders_download_import_and_are_checked(manifest, hub, tmp_path):
    path = weights.download("vlm", manifest=manifest)
    assert path.is_dir() and (path / "config.json").is_file() and hub.calls == [("org/vlm", None, None)]
    assert weights.verify_file(manifest["vlm"], path) == "folder"
    partial = write_med3dvlm_folder(tmp_path / "partial")
    index = json.loads((partial / "model.safetensors.index.json").read_text(encoding="utf-8"))
    (partial / index["weight_map"]["model.mm_projector.low_mixer.0.ln1.weight"]).unlink()  # a shard not copied
    with pytest.raises(CheckpointError, match="missing weight shard"):
        weights.import_file("vlm", partial, manifest=manifest)
    wide = write_med3dvlm_folder(tmp_path / "wide")  # the right keys, one of the wrong shape
    config = json.loads((wide / "config.json").read_text(encoding="utf-8"))
    (wide / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.down_proj\.weight has shape \(32, 64\), expected \(32, 96\)"):
        weights.import_file("vlm", wide, manifest=manifest)
    (partial / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(CheckpointError, match="model_type 'qwen2'"):
        weights.import_file("vlm", partial, manifest=manifest)
    assert weights.import_file("vlm", write_med3dvlm_folder(tmp_path / "usb"), manifest=manifest) == path
    assert weights.delete("vlm", manifest=manifest) and not path.exists()


def test_offline_import_and_corrupted_file(manifest, tmp_path):
    src = tmp_path / "from_usb.pt"
    src.write_bytes(PAYLOAD)
    assert weights.import_file("good", src, manifest=manifest).read_bytes() == PAYLOAD
    src.write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(CheckpointError, match="corrupted"):
        weights.import_file("good", src, manifest=manifest)
    with pytest.raises(InputError, match="unknown weights"):
        weights.import_file("nope", src, manifest=manifest)
    assert weights.delete("good", manifest=manifest) and not weights.weight_path("good", manifest).exists()


def test_shipped_manifest_and_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDVLSAM2_HOME", str(tmp_path))
    entries = weights.load_manifest()
    assert {"sam2.1-hiera-tiny", "medsam2-latest", "med3dvlm-qwen2.5-7b", "dcformer-siglip"} <= set(entries)
    assert all(e.repo and e.license for e in entries.values())  # every entry downloads from huggingface.co
    assert entries["medsam2-latest"].image_size == 512 and entries["sam2.1-hiera-large"].image_size == 1024
    assert main(["weights", "list"]) == 0
    assert "sam2.1-hiera-tiny" in capsys.readouterr().out
    assert main(["weights", "cache"]) == 0 and str(tmp_path) in capsys.readouterr().out
    assert main(["weights", "import", "sam2.1-hiera-tiny", str(tmp_path / "missing.pt")]) == 1


def test_resource_path_finds_the_repository_then_the_installed_module_layout(tmp_path, monkeypatch):
    from medvlsam2 import resources

    repo, installed = tmp_path / "repo" / "Resources", tmp_path / "module" / "Resources"
    monkeypatch.setattr(resources, "SEARCH_DIRS", (repo, installed))
    (installed / "DemoWeights").mkdir(parents=True)
    assert resources.resource_path("DemoWeights") == installed / "DemoWeights"  # installed extension
    (repo / "DemoWeights").mkdir(parents=True)
    assert resources.resource_path("DemoWeights") == repo / "DemoWeights"  # repository wins
    assert resources.resource_path("nothing.json") == repo / "nothing.json"
    with pytest.raises(InputError, match="nothing.json.*Reinstall"):
        resources.resource_path("nothing.json", must_exist=True)


def test_shipped_resources_are_found_from_the_repository(monkeypatch):
    from medvlsam2.resources import resource_path

    monkeypatch.delenv("MEDVLSAM2_MANIFEST", raising=False)
    assert resource_path("DemoWeights", must_exist=True).joinpath("model.safetensors").is_file()
    assert weights.manifest_path() == resource_path("weights_manifest.json", must_exist=True)
    assert "sam2.1-hiera-tiny" in weights.load_manifest()


def test_the_manifest_is_read_from_the_installed_module_layout(tmp_path, monkeypatch):
    """An installed extension has no repository Resources/: the module's Resources/ copy is used."""
    from medvlsam2 import resources

    installed = tmp_path / "qt-scripted-modules" / "Resources"
    installed.mkdir(parents=True)
    (installed / "weights_manifest.json").write_text(
        '{"format": 1, "weights": {"w": {"url": null, "file": "w.pt", "size": 3, "sha256": null, '
        '"license": "MIT"}}}')
    monkeypatch.delenv("MEDVLSAM2_MANIFEST", raising=False)
    monkeypatch.setattr(resources, "SEARCH_DIRS", (tmp_path / "no-repo" / "Resources", installed))
    assert list(weights.load_manifest()) == ["w"]
