"""Our VoxTell wrapper against upstream's ``VoxTellPredictor`` on the same random weights and the same NIfTI file:
maximum absolute difference of the text embedding and of the sliding-window logits, and whether the masks are
identical (goal: <= 1e-5, identical). Upstream runs through its own ``__init__`` (which unpickles the test-made
``checkpoint_final.pth``) and its own file reader; ours reads the converted safetensors and a ``Volume``.
Needs the ``voxtell`` extra. Prints a table and writes JSON.

    python Testing/Benchmarks/voxtell_upstream.py --shape 20,40,36 --out voxtell_upstream.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPTS = ("liver", "hypodense lesion in the right hepatic lobe")  # in the bank; embedded by Qwen3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="20,40,36", help="CT size k,j,i")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import SimpleITK as sitk
    import torch
    import voxtell.inference.predictor as upstream_module
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient
    from voxtell.model.voxtell_model import VoxTellModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Python"))
    from voxtell_folder import HYPER, write_voxtell_folder

    from medvlsam2.io.volume import Volume, read_volume
    from medvlsam2.released.voxtell import VoxTell, from_ras, to_ras

    work = Path(tempfile.mkdtemp(prefix="voxtell-parity-"))
    folder = write_voxtell_folder(work / "voxtell_v1.1", seed=args.seed, keep_pth=True)
    shape = tuple(int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(args.seed)
    direction = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, 1.0])
    array = np.where(rng.random(shape) < 0.9, rng.normal(40, 30, shape), -1000).astype(np.int16)
    image = work / "ct.nii.gz"
    sitk.WriteImage(Volume(array, (0.8, 0.8, 2.0), (-10.0, 20.0, 5.0), direction).to_sitk(), str(image))

    # upstream hard-codes the released text-decoder sizes in its __init__; the test folder's are smaller
    upstream_module.VoxTellModel = functools.wraps(VoxTellModel)(lambda *a, **kw: VoxTellModel(*a, **{**kw, **HYPER}))
    theirs = upstream_module.VoxTellPredictor(str(folder), torch.device("cpu"),
                                              text_encoding_model=str(folder / "Qwen3-Embedding-4B"),
                                              embedding_bank=str(folder / "text_embeddings.npz"))
    ours = VoxTell(folder)
    their_image, _ = NibabelIOWithReorient().read_images([str(image)])
    volume = read_volume(image)
    our_image, ornt = to_ras(volume)
    rows = []
    for prompt in PROMPTS:
        t0 = time.perf_counter()
        their_embedding = theirs.embed_text_prompts([prompt])
        data, _, _ = theirs.preprocess(their_image)
        their_logits = theirs.predict_sliding_window_return_logits(data, their_embedding).float()
        their_mask = theirs.predict_single_image(their_image, text_embeddings=their_embedding)[0]
        t1 = time.perf_counter()
        our_embedding = ours._predictor.embed_text_prompts([prompt])
        data, _, _ = ours._predictor.preprocess(our_image)
        our_logits = ours._predictor.predict_sliding_window_return_logits(data, our_embedding).float()
        our_mask = ours.segment_target(volume, prompt).mask
        t2 = time.perf_counter()
        expected = from_ras(their_mask.astype(np.uint8), ornt)
        rows.append({"prompt": "bank" if prompt == PROMPTS[0] else "qwen3",
                     "embedding_max_abs_diff": float((their_embedding - our_embedding).abs().max()),
                     "logits_max_abs_diff": float((their_logits - our_logits).abs().max()),
                     "masks_identical": bool(our_mask is not None and np.array_equal(our_mask, expected)),
                     "mask_voxels": int(expected.sum()), "upstream_s": round(t1 - t0, 2), "ours_s": round(t2 - t1, 2)})
    print(f"shape {shape}, patch {theirs.patch_size}")
    print(f"{'prompt':8} {'emb diff':>10} {'logit diff':>11} {'identical':>9} {'voxels':>7} {'upstream s':>10} {'ours s':>7}")
    for r in rows:
        print(f"{r['prompt']:8} {r['embedding_max_abs_diff']:10.2e} {r['logits_max_abs_diff']:11.2e} "
              f"{str(r['masks_identical']):>9} {r['mask_voxels']:7d} {r['upstream_s']:10.2f} {r['ours_s']:7.2f}")
    Path(args.out).write_text(json.dumps({"shape": shape, "seed": args.seed, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
