"""Report and open-answer metrics through well-kept packages (nltk, rouge-score, optional bert-score).

Two conventions, both selectable:
- ``m3d`` (M3D-Cap / M3D-VQA, Med3DVLM): BLEU-1, ROUGE-1, METEOR, BERTScore-F1, each per sample then
  averaged.
- ``ct_rate`` (CT-RATE / CT-CHAT, pycocoevalcap style): corpus BLEU-1..4, METEOR, ROUGE-L.

All values are fractions in [0, 1] (papers print them x100). Nothing is ever downloaded: METEOR
needs WordNet already installed, nltk's data (``NLTK_DATA``) or the system's (``wordnet_data``);
BERTScore needs the ``bert_score`` package and a local model folder. When either is missing the
metric is left out and the reason is returned under ``"unavailable"``.
"""

from __future__ import annotations

import re
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


def bertscore_unavailable_reason(model_folder: str | None) -> str | None:
    """None if BERTScore can run offline with ``model_folder``, else why not."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("bert_score") is None:
        return "the bert_score package is not installed"
    if not model_folder:
        return "no local BERTScore model folder was given (--bertscore-model); models are never downloaded"
    if not (Path(model_folder) / "config.json").is_file():
        return f"{model_folder} is not a local Hugging Face model folder (config.json missing)"
    return None


def bertscore(predictions: Sequence[str], references: Sequence[str], model_folder: str,
              num_layers: int | None = None) -> float:
    """Mean BERTScore F1 with a local Hugging Face model folder (``bert_score``; offline only)."""
    _check(predictions, references)
    reason = bertscore_unavailable_reason(model_folder)
    if reason:
        raise InputError(reason)
    import os

    from bert_score import score
    from transformers import AutoConfig

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    layers = num_layers or AutoConfig.from_pretrained(model_folder, local_files_only=True).num_hidden_layers
    _, _, f1 = score(list(predictions), list(references), model_type=model_folder, num_layers=layers)
    return float(f1.mean())


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
        reason = bertscore_unavailable_reason(bertscore_model)
        if reason:
            unavailable["bertscore"] = reason
        else:
            out["bertscore"] = bertscore(predictions, references, bertscore_model)
    out["unavailable"] = unavailable
    return out
