"""Language model via transformers: a local Hugging Face folder or a built-in random Qwen2; optional LoRA (peft)."""

from __future__ import annotations

from pathlib import Path

from ..config import LLMConfig
from ..errors import InputError
from .prompting import IMAGE_TOKEN, SEG_TOKEN


def load_llm_tokenizer(path: str):
    from transformers import AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise InputError(f"LLM folder {folder} has no config.json; point llm.path at a local Hugging Face model "
                         "folder (config.json, weights, tokenizer files). Nothing is downloaded")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": [SEG_TOKEN, IMAGE_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_language_model(cfg: LLMConfig, tokenizer):
    """Causal LM sized to ``tokenizer`` (with [SEG] and the image token), LoRA-wrapped when ``cfg.lora_r > 0``."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    if cfg.path:
        load_llm_tokenizer(cfg.path)  # validates the folder with a clear message
        llm = AutoModelForCausalLM.from_pretrained(cfg.path, local_files_only=True)
        llm.resize_token_embeddings(len(tokenizer))
    elif cfg.builtin:
        config = Qwen2Config(**cfg.builtin, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
        llm = AutoModelForCausalLM.from_config(config)
    else:
        raise InputError("llm config needs either 'path' (local Hugging Face folder) or 'builtin' (Qwen2 settings)")
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        llm = get_peft_model(llm, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"))
    return llm
