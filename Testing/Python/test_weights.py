"""Weights cache: resumable verified downloads from a loopback server, cancel, offline import, CLI."""

import hashlib
import http.server
import re
import threading

import pytest

from medvlsam2 import weights
from medvlsam2.cli import main
from medvlsam2.errors import Cancelled, CheckpointError, InputError
from medvlsam2.utils.cancel import CancelToken

PAYLOAD = bytes(range(256)) * 12_000  # ~3 MB: several chunks


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path and honours 'Range: bytes=N-' like real CDNs."""

    def do_GET(self):
        start = 0
        match = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            self.send_response(206)
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def manifest(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLSAM2_HOME", str(tmp_path / "home"))
    good = hashlib.sha256(PAYLOAD).hexdigest()
    return {
        "good": weights.WeightEntry("good", f"{server}/w.pt", "w.pt", len(PAYLOAD), good, "Apache-2.0"),
        "bad": weights.WeightEntry("bad", f"{server}/w.pt", "bad.pt", None, "0" * 64, "Apache-2.0"),
    }


def test_download_verifies_and_installs(manifest):
    seen = []
    path = weights.download("good", progress=lambda done, total: seen.append((done, total)), manifest=manifest)
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(seen) > 1


def test_cancel_keeps_a_part_file_that_resumes(manifest):
    token = CancelToken()

    def cancel_after_first_chunk(done, total):
        token.cancel()

    with pytest.raises(Cancelled):
        weights.download("good", progress=cancel_after_first_chunk, cancel=token, manifest=manifest)
    part = weights.weight_path("good", manifest).with_name("w.pt.part")
    assert 0 < part.stat().st_size < len(PAYLOAD)
    assert weights.download("good", manifest=manifest).read_bytes() == PAYLOAD
    assert not part.exists()


def test_checksum_mismatch_is_rejected_and_nothing_installed(manifest):
    with pytest.raises(CheckpointError, match="SHA-256"):
        weights.download("bad", manifest=manifest)
    final = weights.weight_path("bad", manifest)
    assert not final.exists() and not final.with_name("bad.pt.part").exists()


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
    assert {"sam2.1-hiera-tiny", "medsam2-latest"} <= set(entries)
    assert all(e.url.startswith("https://") and e.license for e in entries.values())
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
