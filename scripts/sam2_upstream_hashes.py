"""Write the table of sam2 file hashes from the SAM2 authors' repository (run by a maintainer, not at install).

    python scripts/sam2_upstream_hashes.py --repo PATH/TO/facebookresearch/sam2.git --commit 2b90b9f

For every file the installed ``sam2`` distribution puts under ``sam2/`` and ``training/``, reads the same
path in the upstream git tree at ``--commit`` (symlinks followed, as the package ships copies of them) and
records its sha256. It refuses to write when an installed file is missing upstream or differs from it, so
a table exists only for a release that equals upstream. MedVLSAM2SlicerLib/sam2_provenance.py checks an
installation against the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import posixpath
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

from MedVLSAM2SlicerLib import sam2_provenance  # noqa: E402


def git(repo: str, *args: str) -> bytes:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True).stdout


def upstream_blob(repo: str, commit: str, modes: dict[str, str], path: str, hops: int = 0) -> bytes:
    data = git(repo, "show", f"{commit}:{path}")
    if modes.get(path) == "120000":  # a symlink: the package ships the file it points to
        if hops > 8:
            raise SystemExit(f"symlink loop at {path}")
        return upstream_blob(repo, commit, modes, posixpath.normpath(posixpath.join(posixpath.dirname(path),
                                                                                   data.decode())), hops + 1)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="a clone of github.com/facebookresearch/sam2")
    parser.add_argument("--commit", required=True)
    parser.add_argument("-o", "--output", default=str(sam2_provenance.TABLE))
    args = parser.parse_args()
    commit = git(args.repo, "rev-parse", f"{args.commit}^{{commit}}").decode().strip()
    modes = {line.split("\t")[1]: line.split()[0]
             for line in git(args.repo, "ls-tree", "-r", commit).decode().splitlines()}
    dist = distribution("sam2")
    root = Path(dist.locate_file(""))
    files, bad = {}, []
    for rel in sam2_provenance.installed_files(root):
        if rel not in modes:
            bad.append(f"{rel}: not in the upstream tree")
            continue
        digest = hashlib.sha256(upstream_blob(args.repo, commit, modes, rel)).hexdigest()
        if digest != sam2_provenance.sha256(root / rel):
            bad.append(f"{rel}: differs from upstream")
        files[rel] = digest
    if bad:
        print(f"sam2 {dist.version} does not equal {commit[:7]}:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    table = {"distribution": "sam2", "version": dist.version, "upstream": sam2_provenance.UPSTREAM,
             "commit": commit, "files": dict(sorted(files.items()))}
    Path(args.output).write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    print(f"sam2 {dist.version}: {len(files)} files equal {sam2_provenance.UPSTREAM} at {commit[:7]}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
