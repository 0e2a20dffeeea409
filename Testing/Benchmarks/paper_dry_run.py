"""``--dry-run`` of the paper configs on this CPU machine, with stand-ins for what cannot be downloaded here.

    python Testing/Benchmarks/paper_dry_run.py [--out paper_dry_run.json]

Stand-ins (written to a temporary folder): the data sources of ``paper_stage1.yaml`` / ``paper_stage2.yaml``
as three small phantoms in each public layout (the readers, weights and tasks stay the configs'), and a
Qwen2.5-7B-Instruct folder with the published ``config.json`` and a tokenizer of the same length (151,665
entries; no weights: the dry run builds the LLM on the meta device). ``init.sam2_checkpoint`` is dropped
(the SAM2 part is built with random weights either way), and stage 2 builds ``model: paper`` + that LLM
instead of its ``init_from`` stage-1 bundle (same architecture). Parameter counts are exact; memory is
the dry run's estimate. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

QWEN25_7B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
             "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
             "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "vocab_size": 152064,
             "tie_word_embeddings": False, "hidden_act": "silu", "sliding_window": 131072, "use_sliding_window": False,
             "max_window_layers": 28, "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16"}
QWEN_REGULAR, QWEN_SPECIAL = 151643, 22  # len(tokenizer) = 151665 for Qwen2.5


def qwen_standin(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(QWEN25_7B, indent=1))
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(QWEN_REGULAR)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(QWEN_SPECIAL - 3)]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=specials)
    fast.save_pretrained(str(folder))
    assert len(fast) == QWEN_REGULAR + QWEN_SPECIAL
    return folder


def layouts(root: Path) -> dict:
    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.data.writers import write_ct_rate, write_dataset, write_m3d_seg

    organs = {1: "liver", 2: "spleen", 3: "right kidney", 4: "left kidney"}
    cases = [generate_case(s, shape=(32, 128, 128)) for s in range(3)]
    msd = write_dataset(cases, root / "msd", organs)
    volumes, reports, metadata = write_ct_rate(cases, root / "ct_rate")
    seg = {code: write_m3d_seg(cases, root / "M3D_Seg", organs, code=code) for code in ("0000", "0001")}
    return {"m3d_cap": {"path": str(msd / "m3d_cap.json"), "root": str(msd)},
            "m3d_vqa": {"path": str(msd / "m3d_vqa.csv"), "root": str(msd)},
            "m3d_refseg": {"path": str(msd / "m3d_refseg.csv"), "root": str(msd)},
            "ct_rate": {"path": str(volumes), "reports": str(reports), "metadata": str(metadata)},
            "m3d_seg": [{"path": str(p)} for p in seg.values()]}


def standin_config(name: str, data: dict, llm: Path, work: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "MedVLSAM2Slicer" / "configs" / "train" / f"{name}.yaml").read_text())
    seg = iter(data["m3d_seg"])
    for source in cfg["datasets"]:
        for key in ("path", "root", "reports", "metadata"):
            source.pop(key, None)
        source.update(next(seg) if source["reader"] == "m3d_seg" else data[source["reader"]])
        if isinstance(source.get("split", {}).get("held_out"), float):
            source["split"] = {"held_out": 0.34}  # one of three stand-in cases
    cfg.pop("init_from", None)
    cfg["model"] = "paper"
    cfg["init"] = {"llm": str(llm)}
    cfg.update(cache_dir=str(work / "cache"), output_dir=str(work / name), workers=0)
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="paper_dry_run.json")
    args = p.parse_args()
    from medvlsam2.training.config import TrainConfig
    from medvlsam2.training.dry_run import dry_run

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        llm, data = qwen_standin(work / "Qwen2.5-7B-Instruct"), layouts(work / "data")
        for name in ("paper_stage1", "paper_stage2"):
            tic = time.time()
            results[name] = dry_run(TrainConfig.from_dict(standin_config(name, data, llm, work)))
            results[name]["seconds"] = round(time.time() - tic, 1)
    results["load_average"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
