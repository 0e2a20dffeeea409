"""How far a continued bundle moved from its start: for held-out phantoms, the cosine between the two bundles'
bridge outputs for organ prompts (SAM2 and the bridge are shared, so equal prompt tokens mean equal masks) and
whether their greedy answers (segmentation requests incl. absent targets, report, closed VQA) are identical.

    python Testing/Benchmarks/bundle_drift.py Resources/DemoWeights /work/cand/language/bundle --seeds 100000-100001
"""

from __future__ import annotations

import argparse
import json

import torch

from medvlsam2.checkpoint import load_bundle
from medvlsam2.data.synthetic import generate_case
from medvlsam2.evaluation.language import HELD_OUT_TEMPLATES, held_out_findings
from medvlsam2.io.encoder_input import to_encoder_tensor
from medvlsam2.modeling.prompting import REPORT_QUESTION, segment_question

ORGANS = ["liver", "spleen", "right kidney", "left kidney"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--seeds", default="100000-100001")
    p.add_argument("--out", default="bundle_drift.json")
    args = p.parse_args()
    lo, hi = (int(v) for v in args.seeds.split("-"))
    models = [load_bundle(args.before), load_bundle(args.after)]
    prompts = ORGANS + HELD_OUT_TEMPLATES["lesion"][:2] + [t.format(side="left") for t in HELD_OUT_TEMPLATES["cyst"][:2]]
    prompts += ["gallbladder"]
    rows = []
    for seed in range(lo, hi + 1):
        case = generate_case(seed, findings=held_out_findings(seed))
        answers = []
        tokens = []
        for m in models:
            images, _ = to_encoder_tensor(case.volume, m.vision_input_size, m.vision_window)
            visual = m.encode_volume(images)
            texts = {q: "".join(m.stream_text(visual, q)).strip() for q in
                     [segment_question(t) for t in prompts] + [REPORT_QUESTION] + [c.prompt() for c in case.vqa_closed]}
            answers.append(texts)
            tokens.append({o: m.text_to_seg_prompts(visual, o, force=True)[0][1].flatten() for o in ORGANS})
        cos = {o: float(torch.nn.functional.cosine_similarity(tokens[0][o], tokens[1][o], dim=0)) for o in ORGANS}
        same = {q: answers[0][q] == answers[1][q] for q in answers[0]}
        rows.append({"seed": seed, "organ_token_cosine": cos, "identical_answers": sum(same.values()),
                     "answers": len(same), "before": answers[0], "after": answers[1]})
        print(seed, {o: round(c, 6) for o, c in cos.items()}, f"identical answers {sum(same.values())}/{len(same)}",
              flush=True)
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
