"""WordNet for nltk's METEOR without a download: reuse the WordNet 3.0 database the system has.

Debian and Ubuntu ship it as the packages ``wordnet-base`` and ``wordnet-sense-index`` (files in
/usr/share/wordnet; ``WNSEARCHDIR`` names another folder). nltk reads corpora only from inside its data
path and also wants a ``lexnames`` file those packages lack, so the database is copied once into
``$MEDVLSAM2_HOME/nltk_data/corpora/wordnet`` with ``lexnames`` written from WordNet 3.0's fixed list.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# WordNet 3.0 lexicographer files, in file-number order (lexnames(5WN)).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
REQUIRED = [f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")] + ["index.sense"]


def system_wordnet() -> Path | None:
    """The folder of a system WordNet database with every file nltk needs, or None."""
    for folder in (os.environ.get("WNSEARCHDIR"), "/usr/share/wordnet", "/usr/local/share/wordnet"):
        if folder and all((Path(folder) / name).is_file() for name in REQUIRED):
            return Path(folder)
    return None


def prepare_nltk_wordnet(source: Path, data_root: Path) -> Path:
    """Copy ``source`` into ``data_root``/corpora/wordnet with a ``lexnames`` file; returns ``data_root``."""
    target = data_root / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():
        tmp = target.with_name(".wordnet.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in source.iterdir():
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
        lines = [f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)]
        (tmp / "lexnames").write_text("".join(lines))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return data_root


def use_system_wordnet() -> bool:
    """Make ``nltk.corpus.wordnet`` load from the system database (prepared once); False if there is none."""
    import nltk

    from ..weights import home_dir

    source = system_wordnet()
    if source is None:
        return False
    root = str(prepare_nltk_wordnet(source, home_dir() / "nltk_data"))
    if root not in nltk.data.path:
        nltk.data.path.append(root)
    return True
