"""Is the installed ``sam2`` the SAM2 authors' code? Compares every installed file with a table of sha256
hashes taken from github.com/facebookresearch/sam2 at a fixed commit (Resources/sam2-upstream-sha256.json,
written by scripts/sam2_upstream_hashes.py).

The ``sam2`` 1.1.0 on PyPI was uploaded by a third party; its files equal upstream, so we install it and
check it: after the panel's installer and scripts/bootstrap.sh install it, and in the test suite. A
modified, missing or extra file (or another version) is refused with the file named.

    python MedVLSAM2Slicer/MedVLSAM2SlicerLib/sam2_provenance.py     # exit 1 and the differences, or 0
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

UPSTREAM = "https://github.com/facebookresearch/sam2"
TABLE = Path(__file__).resolve().parents[1] / "Resources" / "sam2-upstream-sha256.json"
PACKAGES = ("sam2", "training")  # the distribution installs both top-level packages, as upstream's setup.py does


class Sam2ProvenanceError(RuntimeError):
    pass


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed_files(root: Path) -> list[str]:
    """Files of the sam2 distribution's packages under site-packages ``root`` (no byte-code caches)."""
    return sorted(p.relative_to(root).as_posix() for package in PACKAGES if (root / package).is_dir()
                  for p in (root / package).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def load_table(path: Path = TABLE) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def problems(root: Path | None = None, version: str | None = None, table: dict | None = None) -> list[str]:
    """Differences between the sam2 installed in ``root`` (default: this Python's) and the table; [] if none."""
    table = table if table is not None else load_table()
    if root is None:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            dist = distribution("sam2")
        except PackageNotFoundError:
            return ["sam2 is not installed"]
        root, version = Path(dist.locate_file("")), dist.version
    found = []
    if version is not None and version != table["version"]:
        found.append(f"sam2 {version} is installed; the checked release is {table['version']} (install "
                     f"sam2=={table['version']})")
    expected: dict[str, str] = table["files"]
    present = set(installed_files(Path(root)))
    for rel in sorted(present - set(expected)):
        found.append(f"{rel}: not in the SAM2 authors' release")
    for rel, digest in sorted(expected.items()):
        if rel not in present:
            found.append(f"{rel}: missing")
        elif sha256(Path(root) / rel) != digest:
            found.append(f"{rel}: modified (sha256 differs from {UPSTREAM} at {table['commit'][:7]})")
    return found


def verify(root: Path | None = None, version: str | None = None, table: dict | None = None) -> int:
    """Raise ``Sam2ProvenanceError`` naming the first differences; return the number of files checked."""
    table = table if table is not None else load_table()
    found = problems(root, version, table)
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise Sam2ProvenanceError(f"the installed sam2 is not the SAM2 authors' code: {'; '.join(found[:3])}{more}. "
                                  "Reinstall it (pip install --force-reinstall --no-deps sam2==" + table["version"] + ")")
    return len(table["files"])


def main() -> int:
    table = load_table()
    try:
        n = verify(table=table)
    except Sam2ProvenanceError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"sam2 {table['version']}: {n} files equal {UPSTREAM} at {table['commit'][:7]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
