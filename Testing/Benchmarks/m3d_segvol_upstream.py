"""Upstream M3D-LaMed / SegVol code versus ours, run OUTSIDE the test suite in a side environment.

The upstream code needs monai 1.3 and transformers 4.x, so this script runs under a side interpreter that
has them (e.g. /work/venvs/t23a-side: monai 1.3.0, transformers 4.45.2, torch from the main venv) with the
two upstream checkouts given by path. Nothing here is imported by the product.

  keys    build the upstream models at the published configuration on the meta device and write the
          key -> shape fixtures that Testing/Python checks our modules against:
          python m3d_segvol_upstream.py keys --m3d M3D --segvol SegVol --out Testing/Python/fixtures
  parity  write random weights in the published layout, run the upstream SegVol decoder path (M3D's
          seg_projector + seg_module, SegVol's CLIP tower + seg modules) and print the max abs difference
          of the mask logits against ours (ours is run by the main venv through --ours-python).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch

# Published M3D-LaMed-Phi-3-4B configuration (Phi-3-mini-4k + the LaMed fields its training wrote).
M3D_CONFIG = dict(
    vocab_size=32015, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
    tie_word_embeddings=False, image_channel=1, image_size=[32, 256, 256], patch_size=[4, 16, 16],
    vision_tower="vit3d", vision_select_layer=-1, vision_select_feature="patch", mm_projector_type="spp",
    proj_layer_type="mlp", proj_layer_num=2, proj_pooling_type="spatial", proj_pooling_size=2,
    segmentation_module="segvol", mm_hidden_size=768, seg_token_id=32014,
)


def _stub_torchvision() -> None:
    """The upstream SAM package imports torchvision for 2D resizing it never uses in 3D."""
    import monai  # noqa: F401  (imported before the stub: they probe for torchvision at import)
    import transformers  # noqa: F401

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    fn.resize = fn.to_pil_image = boxes.batched_nms = boxes.box_area = None
    tv.transforms, tr.functional, tv.ops, ops.boxes = tr, fn, ops, boxes
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn,
                        "torchvision.ops": ops, "torchvision.ops.boxes": boxes})


def upstream_m3d(m3d: Path, config: dict, device: str = "meta"):
    _stub_torchvision()
    sys.path.insert(0, str(m3d))
    from LaMed.src.model.language_model.lamed_phi3 import LamedPhi3Config, LamedPhi3ForCausalLM

    with torch.device(device):
        return LamedPhi3ForCausalLM(LamedPhi3Config(**config))


def upstream_segvol(segvol: Path, device: str = "meta", image_size=(32, 256, 256), patch_size=(4, 16, 16),
                    clip_config: dict | None = None):
    """The HF ``SegVolModel`` layout: everything under ``model.`` (image/prompt/mask + text_encoder)."""
    _stub_torchvision()
    sys.path.insert(0, str(segvol))
    import transformers
    from network import model as net
    from segment_anything_volumetric.build_sam import _build_sam

    if clip_config is not None:  # a tiny CLIP text tower for parity runs
        cfg = transformers.CLIPTextConfig(**clip_config)
        net.CLIPTextConfig = lambda: cfg
    net.BinaryDiceLoss = net.BCELoss = lambda: torch.nn.Identity()  # training losses call .cuda()
    with torch.device(device):
        sam = _build_sam("vit", 768, list(patch_size), None, list(image_size))
        seg = net.SegVol(sam.image_encoder, sam.mask_decoder, sam.prompt_encoder, str(segvol / "config" / "clip"),
                         list(image_size), list(patch_size), test_mode=True)
        wrapper = torch.nn.Module()
        wrapper.model = seg
    return wrapper


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def cmd_keys(args) -> None:
    out = Path(args.out)
    m3d = shapes(upstream_m3d(Path(args.m3d), M3D_CONFIG))
    segvol = upstream_segvol(Path(args.segvol))
    sv = shapes(segvol)
    # BAAI/SegVol's file was written by a transformers that kept CLIP's position_ids buffer persistent (it
    # became non-persistent in 4.31): the release holds it, so the published layout has it (475 tensors).
    pid = "model.text_encoder.clip_text_model.text_model.embeddings.position_ids"
    sv.setdefault(pid, list(segvol.model.text_encoder.clip_text_model.text_model.embeddings.position_ids.shape))
    import monai
    import transformers

    configs = {"m3d_lamed_phi3_4b_keys.json": {**M3D_CONFIG, "model_type": "lamed_phi3"},
               "segvol_keys.json": {"model_type": "segvol", "spatial_size": [32, 256, 256], "patch_size": [4, 16, 16]}}
    for name, keys in (("m3d_lamed_phi3_4b_keys.json", m3d), ("segvol_keys.json", sv)):
        doc = {"source": "upstream builders on the meta device (monai %s, transformers %s)"
                         % (monai.__version__, transformers.__version__),
               "config": configs[name], "count": len(keys), "shapes": keys}
        (out / name).write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")
        print(name, len(keys), "tensors,", sum(int(torch.tensor(s).prod()) for s in keys.values()), "parameters")


GOLDEN_SIZE = (8, 32, 32)  # the trained 32x256x256 shrunk so that the goldens stay small


def phantom_nifti(folder: Path, name: str, affine) -> Path:
    """A small deterministic CT-like phantom (HU) with a bright box, written as NIfTI with ``affine``."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(7)
    ct = rng.normal(-700, 40, size=(30, 24, 20))  # (I, J, K)
    ct[4:26, 3:21, 2:18] = rng.normal(40, 20, size=(22, 18, 16))  # body
    ct[8:16, 6:14, 5:12] += 150  # an organ
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.round(ct).astype(np.int16), affine), str(path))
    label = np.zeros(ct.shape, dtype=np.uint8)
    label[8:16, 6:14, 5:12] = 1
    nib.save(nib.Nifti1Image(label, affine), str(folder / f"{name}_label.nii.gz"))
    return path


def golden_affines():
    import numpy as np

    c, s = np.cos(0.3), np.sin(0.3)
    oblique = np.eye(4)
    oblique[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.8, 0.9, 2.5])
    oblique[:3, 3] = (-20, 15, 40)
    lps = np.diag([-0.7, -0.7, 3.0, 1.0])  # LPS-aligned axes (NIfTI stores RAS: negative x/y)
    ras = np.diag([0.7, 0.7, 3.0, 1.0])
    return {"lps": lps, "ras": ras, "oblique": oblique}


def segvol_demo(segvol: Path):
    """SegVol's demo preprocessing module, runnable on monai 1.3."""
    import functools

    import monai.transforms as mtf
    import numpy as np

    sys.path.insert(0, str(segvol))
    from data_process import demo_data_process as demo

    # Written for monai 0.9, whose LoadImage returned (image, meta); np.array() then drops the affine, so the
    # demo's Orientationd("RAS") sees an identity affine and changes nothing (training had it commented out).
    demo.transforms = types.SimpleNamespace(**{n: getattr(mtf, n) for n in dir(mtf) if not n.startswith("_")})
    demo.transforms.LoadImage = functools.partial(mtf.LoadImage, image_only=False)

    class OrientationdNumpy(mtf.Orientationd):  # monai 0.9 handed numpy on as numpy; 1.3 makes a MetaTensor
        def __call__(self, data, lazy=None):
            return {k: np.asarray(v) if k in self.keys else v for k, v in super().__call__(data, lazy).items()}

    demo.transforms.Orientationd = OrientationdNumpy
    return demo


def cmd_goldens(args) -> None:
    """Upstream preprocessing on phantoms: M3D-Seg (normalize, (Z,Y,X), min-max, crop, resize) and SegVol's
    demo (RAS, normalise, (Z,Y,X), min-max, pad, crop, zoom-out resize), at GOLDEN_SIZE."""
    import numpy as np
    import monai.transforms as mtf
    from monai.data import set_track_meta

    m3d, segvol, out = Path(args.m3d), Path(args.segvol), Path(args.out)
    sys.path.insert(0, str(segvol))
    demo = segvol_demo(segvol)
    ForegroundNormalization, process_ct_gt = demo.ForegroundNormalization, demo.process_ct_gt

    # M3D-Seg: its prepare script's module-level transform, at the golden size (the file runs a job on import).
    source = (m3d / "Data/process/m3d_seg_data_prepare.py").read_text()
    source = source[: source.index("folders =")].replace("[32,256,256]", str(list(GOLDEN_SIZE)))
    env: dict = {}
    exec(compile(source, "m3d_seg_data_prepare.py", "exec"), env)
    set_track_meta(False)
    tmp = out / "_tmp"
    tmp.mkdir(exist_ok=True)
    goldens = {}
    for name, affine in golden_affines().items():
        path = phantom_nifti(tmp, name, affine)
        raw = np.asarray(mtf.LoadImage(image_only=True)(str(path)))[None]  # (1, I, J, K) as M3D-Seg's npy
        image = ForegroundNormalization(["image"]).normalize(raw)  # the same function as M3D's normalize
        image = np.swapaxes(image, -1, -3)
        image = image - image.min()
        image = image / np.clip(image.max(), a_min=1e-8, a_max=None)
        label = np.swapaxes(np.zeros_like(raw, dtype=np.uint8), -1, -3)
        items = env["transform"]({"image": image, "label": label})
        goldens[f"m3d_{name}"] = np.asarray(items["image"])[0].astype(np.float32)
        set_track_meta(True)
        item = process_ct_gt(str(path), str(tmp / f"{name}_label.nii.gz"), ["organ"], GOLDEN_SIZE)
        set_track_meta(False)
        goldens[f"segvol_{name}"] = np.asarray(item["zoom_out_image"])[0].astype(np.float32)
        import nibabel as nib
        goldens[f"input_{name}"] = np.asarray(nib.load(str(path)).dataobj).astype(np.int16)
        goldens[f"affine_{name}"] = affine
    np.savez_compressed(out / "m3d_segvol_preprocess_goldens.npz", **goldens)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    print({k: v.shape for k, v in goldens.items()})


# ----- parity: upstream (this interpreter) vs ours (the main venv, run as a subprocess) ---------------
PARITY_IMAGE = (16, 64, 64)  # a small model input; the modules are the published 768-wide ones
SEGVOL_IMAGE = (8, 32, 32)  # smaller than the phantom's crop along D: the zoom-in slides several windows
QUESTION = "Can you segment the liver in this image?"
ANSWER = "It is [SEG] and [SEG]."  # scripted: [SEG] twice (averaged), not first (upstream generate drops that)


def _ours(args, *argv) -> dict:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": f"{root / 'MedVLSAM2Slicer'}:{root / 'Testing' / 'Python'}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([args.ours_python, __file__, *argv], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


class Scripted(torch.nn.Module):
    """An lm_head answering a fixed token sequence whatever the states (the states stay the model's own)."""

    def __init__(self, weight, ids):
        super().__init__()
        self.weight, self.ids, self.i = weight, list(ids), 0

    def forward(self, h):
        token = self.ids[min(self.i, len(self.ids) - 1)]
        self.i += 1
        out = torch.zeros(*h.shape[:-1], self.weight.shape[0], dtype=h.dtype, device=h.device)
        out[..., token] = 10.0
        return out


def _image(seed: int, size=PARITY_IMAGE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool3d(torch.rand(1, 1, *size, generator=g), 5, 1, 2)  # smooth, [0, 1]
    return (x - x.min()) / (x.max() - x.min())


def _save(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def cmd_parity(args) -> None:
    import numpy as np

    torch.cuda.is_available = lambda: False
    torch.Tensor.cuda = lambda self, *a, **k: self  # upstream moves tokens and masks to CUDA unconditionally
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {}

    # M3D-LaMed: tiny Phi-3 (our tokenizer), published 768-wide vision tower and seg modules
    m3d = work / "m3d"
    m3d.mkdir(exist_ok=True)
    tok = _ours(args, "ours-m3d-tokenizer", str(m3d), QUESTION, ANSWER)
    config = {**M3D_CONFIG, "vocab_size": tok["vocab"], "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
              "max_position_embeddings": 1024, "bos_token_id": tok["bos"], "eos_token_id": tok["eos"],
              "pad_token_id": tok["eos"], "image_size": list(PARITY_IMAGE), "seg_token_id": tok["seg"],
              "sliding_window": None}
    torch.manual_seed(0)
    up = upstream_m3d(Path(args.m3d), config, device="cpu").eval()
    up.config.save_pretrained(str(m3d))
    cfg = json.loads((m3d / "config.json").read_text())
    (m3d / "config.json").write_text(json.dumps({**cfg, "model_type": "lamed_phi3"}))
    (m3d / "generation_config.json").write_text(json.dumps({"eos_token_id": tok["eos"], "max_new_tokens": 32}))
    _save(up.state_dict(), m3d / "model.safetensors")
    image = _image(1)
    up.lm_head = Scripted(up.lm_head.weight, tok["answer"] + [tok["eos"]])
    with torch.no_grad():
        ids, logits = up.generate(image, torch.tensor([tok["prompt"]]), seg_enable=True, max_new_tokens=32,
                                  do_sample=False)
    np.savez(work / "m3d_upstream.npz", image=image.numpy(), logits=logits.numpy(), ids=ids.numpy())
    ours = _ours(args, "ours-m3d", str(m3d), str(work / "m3d_upstream.npz"), QUESTION)
    results["m3d"] = ours

    # SegVol: the published module sizes, CLIP ViT-B/32 text tower and SegVol's own CLIP tokenizer
    segvol = work / "segvol"
    segvol.mkdir(exist_ok=True)
    torch.manual_seed(0)
    net = upstream_segvol(Path(args.segvol), device="cpu", image_size=SEGVOL_IMAGE).model.eval()
    state = {"model." + k: v for k, v in net.state_dict().items()}
    pid = "model.text_encoder.clip_text_model.text_model.embeddings.position_ids"
    state.setdefault(pid, torch.arange(77)[None])
    _save(state, segvol / "model.safetensors")
    for f in (Path(args.segvol) / "config" / "clip").iterdir():
        if f.name != "config.json":
            (segvol / f.name).write_bytes(f.read_bytes())
    (segvol / "config.json").write_text(json.dumps({"model_type": "segvol", "spatial_size": list(SEGVOL_IMAGE),
                                                    "patch_size": [4, 16, 16], "test_mode": True}))
    image = _image(2, SEGVOL_IMAGE)
    with torch.no_grad():
        logits = net(image, text=["liver"])
    np.savez(work / "segvol_upstream.npz", image=image.numpy(), logits=logits.numpy())
    results["segvol"] = _ours(args, "ours-segvol", str(segvol), str(work / "segvol_upstream.npz"), "liver")

    # SegVol end to end on a phantom CT file: demo preprocessing, zoom-out, zoom-in sliding windows
    from monai.data import set_track_meta

    demo = segvol_demo(Path(args.segvol))
    import inference_demo

    ct = phantom_nifti(work, "oblique", golden_affines()["oblique"])
    set_track_meta(True)
    item = demo.process_ct_gt(str(ct), str(work / "oblique_label.nii.gz"), ["liver"], SEGVOL_IMAGE)
    set_track_meta(False)
    demo_args = types.SimpleNamespace(use_text_prompt=True, use_point_prompt=False, use_box_prompt=False,
                                      use_zoom_in=True, spatial_size=SEGVOL_IMAGE, infer_overlap=0.5)
    with torch.no_grad():
        record = inference_demo.zoom_in_zoom_out(demo_args, net, item["image"].float()[None],
                                                 item["zoom_out_image"].float()[None],
                                                 torch.as_tensor(item["label"])[None].contiguous(),
                                                 torch.as_tensor(item["zoom_out_label"])[None].contiguous(), ["liver"])
    np.savez(work / "segvol_zoom_upstream.npz", logits=record["liver"][4].numpy())
    results["segvol_zoom_in"] = _ours(args, "ours-segvol-zoom", str(segvol), str(ct), str(work / "segvol_zoom_upstream.npz"))
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def _compare(ours: torch.Tensor, upstream) -> dict:
    up = torch.as_tensor(upstream).float()
    return {"max_abs_diff_logits": float((ours.float() - up).abs().max()), "logit_range": float(up.abs().max()),
            "masks_identical": bool(torch.equal(ours > 0, up > 0)), "mask_voxels": int((up > 0).sum()),
            "voxels": int(up.numel())}


def ours_m3d_tokenizer(folder: str, question: str, answer: str) -> None:
    from released_folders import _bpe
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=_bpe(["<unk>", "<s>", "<|endoftext|>"], "<s>", None),
                                   bos_token="<s>", eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<im_patch>", "<bx_start>", "<bx_end>"]})
    fast.add_tokens("[SEG]")
    fast.save_pretrained(folder)
    n = (PARITY_IMAGE[0] // 4 // 2) * (PARITY_IMAGE[1] // 16 // 2) * (PARITY_IMAGE[2] // 16 // 2)
    print(json.dumps({"vocab": len(fast), "bos": fast.bos_token_id, "eos": fast.eos_token_id,
                      "seg": fast.convert_tokens_to_ids("[SEG]"),
                      "prompt": fast("<im_patch>" * n + " " + question)["input_ids"],
                      "answer": fast(answer, add_special_tokens=False)["input_ids"]}))


def ours_m3d(folder: str, upstream: str, question: str) -> None:
    import numpy as np

    from medvlsam2.released.folders import load_m3d_lamed

    up = np.load(upstream)
    model = load_m3d_lamed(folder)
    answer = [int(t) for t in up["ids"][0]]
    model.lm.lm_head = Scripted(model.lm.lm_head.weight, answer)
    image = torch.from_numpy(up["image"])
    with torch.no_grad():
        ids, state = model.answer(image, question)
        inner = model.lm.model
        logits = inner.seg_module(image, inner.seg_projector(state))
    out = _compare(logits, up["logits"])
    out["generated_ids_identical"] = ids == answer[: len(ids)] and len(ids) == len(answer) - 1
    print(json.dumps(out))


def ours_segvol(folder: str, upstream: str, target: str) -> None:
    import numpy as np

    from medvlsam2.released.folders import load_segvol

    up = np.load(upstream)
    model = load_segvol(folder)
    with torch.no_grad():
        image = torch.from_numpy(up["image"])
        logits = model.net.decode(model.net.encode(image), model.text_embedding(target))
    print(json.dumps(_compare(logits, up["logits"])))


def ours_segvol_zoom(folder: str, ct: str, upstream: str) -> None:
    import numpy as np

    from medvlsam2.io.volume import read_volume
    from medvlsam2.released.folders import load_segvol

    model = load_segvol(folder)
    logits, _ = model.crop_logits(read_volume(ct), "liver")
    print(json.dumps(_compare(logits, np.load(upstream)["logits"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keys")
    k.add_argument("--m3d", required=True)
    k.add_argument("--segvol", required=True)
    k.add_argument("--out", required=True)
    g = sub.add_parser("goldens")
    g.add_argument("--m3d", required=True)
    g.add_argument("--segvol", required=True)
    g.add_argument("--out", required=True)
    p = sub.add_parser("parity")
    p.add_argument("--m3d", required=True)
    p.add_argument("--segvol", required=True)
    p.add_argument("--work", required=True, help="scratch folder for the random-weight folders")
    p.add_argument("--ours-python", default="/work/main/.venv/bin/python")
    p.add_argument("--json", help="also write the numbers here")
    if len(sys.argv) > 1 and sys.argv[1].startswith("ours-"):  # the main-venv half of parity
        {"ours-m3d-tokenizer": ours_m3d_tokenizer, "ours-m3d": ours_m3d, "ours-segvol": ours_segvol,
         "ours-segvol-zoom": ours_segvol_zoom}[sys.argv[1]](*sys.argv[2:])
        return
    args = ap.parse_args()
    {"keys": cmd_keys, "goldens": cmd_goldens, "parity": cmd_parity}[args.cmd](args)


if __name__ == "__main__":
    main()
