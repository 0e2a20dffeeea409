"""Offline tokenizer for built-in (randomly initialised) language models: word-level, lower-cased."""

from __future__ import annotations

from typing import Iterable

from .prompting import IMAGE_TOKEN, SEG_TOKEN

PAD, UNK, EOS = "[PAD]", "[UNK]", "</s>"
CHOICE_LETTERS = "ABCD"
SPECIAL_TOKENS = [PAD, UNK, EOS, SEG_TOKEN, IMAGE_TOKEN]

DEFAULT_CORPUS = [
    "Segment the liver. Segment the spleen. Segment the right kidney and the left kidney. Segment the pancreas, "
    "the aorta, the stomach, the lesion in the liver, the cyst in the kidney. It is .",
    "Generate a findings report for this CT. The liver is normal in size with a hypodense lesion. No renal cyst. "
    "The spleen is enlarged. The pancreas, aorta and stomach are unremarkable. Impression: no acute abnormality.",
    "What is this? Is there a lesion? Which kidney has a cyst? Is the spleen enlarged? How many lesions? "
    "A. B. C. D. yes no left right one two three small medium large mm cm",
]


def build_tokenizer(corpus: Iterable[str] | None = None):
    """Train a word-level tokenizer on ``corpus`` (default: a small radiology vocabulary); no download."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, glues punctuation sensibly
    tok.train_from_iterator(list(corpus or DEFAULT_CORPUS), trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    # Choice letters keep their case ("B." is how closed VQA is scored); everything else is lower-cased.
    tok.add_tokens([AddedToken(letter, single_word=True, normalized=False) for letter in CHOICE_LETTERS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=EOS,
                                   extra_special_tokens=None, additional_special_tokens=[SEG_TOKEN, IMAGE_TOKEN])
