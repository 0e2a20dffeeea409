"""Continue a bundle trained before region input and the new language data: add the region encoder,
``REGION_TOKEN`` and the words of the current synthetic corpus the tokenizer lacks, then save a bundle
to train from (``init_from``). The weights that exist are kept as they are.

    python -m medvlsam2.training.upgrade Resources/DemoWeights runs/language_init
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..checkpoint import load_bundle, save_bundle


def upgrade_bundle(src: str | Path, dst: str | Path) -> Path:
    from ..data.synthetic import corpus

    model = load_bundle(src)
    words = {w for text in corpus() for w in re.findall(r"[A-Za-z]+", text)}
    before = len(model.tokenizer)
    model.enable_region_input(words)
    old = Path(src) / "metadata.json"
    meta = json.loads(old.read_text()) if old.is_file() else {}
    meta.update({"upgraded_from": str(src), "added_tokens": len(model.tokenizer) - before})
    return save_bundle(model, dst, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args()
    out = upgrade_bundle(args.src, args.dst)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
