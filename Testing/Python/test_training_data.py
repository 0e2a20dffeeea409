"""Training on the public dataset layouts: the ``datasets:`` config, streamed batches, both stages through
the CLI on M3D-Seg / MSD / M3D-Cap / CT-RATE / M3D-VQA / M3D-RefSeg files written here, clear errors
before the first step, and an FSDP checkpoint round trip on two CPU ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from medvlsam2.errors import InputError  # noqa: E402
from medvlsam2.training.config import TrainConfig  # noqa: E402

SMALL = dict(shape=(8, 32, 32), spacing=(11.2, 11.2, 20.0))
ORGANS = {1: "liver", 2: "spleen", 3: "right kidney", 4: "left kidney"}
STEP = dict(model="tiny", lr=1e-3, warmup_steps=1, cases_per_step=3, text_cases=3, seg_clips=2, interactive_clips=1,
            clip_len=2, probes=2, log_every=1, checkpoint_every=2, cpu=True)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Three phantoms written in every public layout the readers take."""
    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.data.writers import write_ct_rate, write_dataset, write_m3d_seg

    root = tmp_path_factory.mktemp("layouts")
    cases = [generate_case(s, **SMALL) for s in range(3)]
    msd = write_dataset(cases, root / "msd", ORGANS)  # dataset.json + NIfTI, and M3D-Cap / VQA / RefSeg indexes
    volumes, reports, metadata = write_ct_rate(cases, root / "ct_rate")
    return {"msd": msd, "m3d_seg": write_m3d_seg(cases, root / "M3D_Seg", ORGANS, code="0003"),
            "m3d_cap": msd / "m3d_cap.json", "m3d_vqa": msd / "m3d_vqa.csv", "m3d_refseg": msd / "m3d_refseg.csv",
            "ct_rate": (volumes, reports, metadata), "root": root}


def _sources(layouts, stage: int) -> list[dict]:
    volumes, reports, metadata = layouts["ct_rate"]
    text = [{"reader": "m3d_cap", "path": str(layouts["m3d_cap"]), "tasks": ["report"]},
            {"reader": "ct_rate", "path": str(volumes), "reports": str(reports), "metadata": str(metadata),
             "tasks": ["report"]},
            {"reader": "m3d_vqa", "path": str(layouts["m3d_vqa"]), "tasks": ["vqa"]}]
    seg = [{"reader": "m3d_seg", "path": str(layouts["m3d_seg"]), "weight": 2, "tasks": ["seg", "interactive"],
            "split": {"held_out": ["synthetic-1"]}},
           {"reader": "msd", "path": str(layouts["msd"]), "tasks": ["seg", "report", "vqa"], "split": {"held_out": 0.34}},
           {"reader": "m3d_refseg", "path": str(layouts["m3d_refseg"]), "tasks": ["refseg", "interactive"]}]
    return text if stage == 1 else seg + text[:1]


def _config(tmp_path, layouts, stage: int, **kw) -> dict:
    return {"stage": stage, "datasets": _sources(layouts, stage), "output_dir": str(tmp_path / f"stage{stage}"),
            "cache_dir": str(tmp_path / "cache"), "max_steps": 2, **STEP, **kw}


def test_config_errors_name_what_to_fix(tmp_path, layouts):
    from medvlsam2.training.loop import train

    with pytest.raises(InputError, match="unknown key.*'bogus'"):
        TrainConfig.from_dict({"datasets": [{"reader": "m3d_seg", "path": "x", "bogus": 1}]})
    with pytest.raises(InputError, match="unknown reader"):
        TrainConfig.from_dict({"datasets": [{"reader": "nnunet", "path": "x"}]})
    with pytest.raises(InputError, match="at least one data source"):
        TrainConfig.from_dict({"stage": 1})
    with pytest.raises(InputError, match="needs 'reports'"):
        TrainConfig.from_dict({"datasets": [{"reader": "ct_rate", "path": "x"}]})
    missing = tmp_path / "nowhere" / "M3D_Seg" / "0000"
    cfg = TrainConfig.from_dict(_config(tmp_path, layouts, 2, datasets=[{"reader": "m3d_seg", "path": str(missing)}]))
    with pytest.raises(InputError, match=str(missing)):
        train(cfg)
    assert not (tmp_path / "stage2").exists()  # failed before the model, the data or a step
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver"}, "training": []}))
    cfg = TrainConfig.from_dict(_config(tmp_path, layouts, 2, datasets=[{"reader": "msd", "path": str(empty)}]))
    with pytest.raises(InputError, match=f"no training cases.*{empty}|{empty}.*no training cases"):
        train(cfg)
    cfg = TrainConfig.from_dict(_config(tmp_path, layouts, 2, datasets=[
        {"reader": "msd", "path": str(layouts["msd"]), "split": {"held_out": ["no_such_case"]}}]))
    with pytest.raises(InputError, match="no_such_case"):
        train(cfg)


def test_streamed_steps_are_pure_functions_of_seed_and_step_and_build_only_planned_slices(tmp_path, layouts):
    from medvlsam2.config import tiny
    from medvlsam2.training.sources import open_sources
    from medvlsam2.training.stream import PlannedSlices, StepData, planned_slices

    cfg = TrainConfig.from_dict(_config(tmp_path, layouts, 2))
    sources = open_sources(cfg.datasets)
    assert [len(s.train) for s in sources] == [2, 2, 3, 3]  # one id held out of m3d_seg, a third of msd
    assert sources[0].held_out == ["synthetic-1"] and len(sources[1].held_out) == 1
    data = StepData(sources, cfg, tiny())
    a, b, c = data[5], data[5], data[6]
    assert repr(a[1]) == repr(b[1]) and repr(a[1]) != repr(c[1])
    pool, plan = a
    used = planned_slices(plan)
    for i, case in enumerate(pool):
        assert isinstance(case.frames, PlannedSlices) and len(case.frames._slices) == len(used.get(i, ()))
        if used.get(i):
            k = sorted(used[i])
            assert case.frames[k].shape == (len(k), 3, 128, 128) and case.labels[k].shape == (len(k), 128, 128)
    # the m3d_seg source trains no language: its cases bring no report rows
    m3d = data.case(0, sources[0].train[0])
    assert m3d.report is None and m3d.vqa_closed == [] and m3d.labels is not None
    # refseg + interactive only: its referring expressions stay, its report goes
    refseg = data.case(2, 0)
    assert refseg.referring and refseg.report is None and sources[2].structures == {}


def test_loss_on_a_fixed_streamed_batch_goes_down(tmp_path, layouts):
    from medvlsam2.config import tiny
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.training.loop import _set_modes
    from medvlsam2.training.sources import open_sources
    from medvlsam2.training.stage2 import stage2_losses
    from medvlsam2.training.stream import StepData

    cfg = TrainConfig.from_dict(_config(tmp_path, layouts, 2))
    pool, plan = StepData(open_sources(cfg.datasets), cfg, tiny())[0]
    assert plan.seg and plan.text
    torch.manual_seed(0)
    model = MedVLSAM2.from_config(tiny())
    _set_modes(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        torch.manual_seed(1)
        logs = stage2_losses(model, pool, plan, torch.device("cpu"))
        losses.append(float(logs["loss"]))
        opt.zero_grad()
        logs["loss"].backward()
        opt.step()
    assert losses[-1] < losses[0]


def test_cli_trains_stage1_then_stage2_on_the_public_layouts(tmp_path, layouts, capsys):
    from medvlsam2.checkpoint import load_bundle
    from medvlsam2.cli import main

    stage1 = tmp_path / "stage1.json"
    stage1.write_text(json.dumps(_config(tmp_path, layouts, 1)))
    assert main(["train", str(stage1), "--max-steps", "2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["final"].endswith("step_0000002")
    meta = json.loads((Path(first["final"]) / "metadata.json").read_text(encoding="utf-8"))
    assert [d["reader"] for d in meta["datasets"]] == ["m3d_cap", "ct_rate", "m3d_vqa"]
    assert "synthetic" not in meta["trained_on"]
    stage2 = tmp_path / "stage2.json"
    stage2.write_text(json.dumps(_config(tmp_path, layouts, 2, init_from=first["final"], max_steps=3)))
    assert main(["train", str(stage2), "--max-steps", "2"]) == 0
    second = json.loads(capsys.readouterr().out)
    held = json.loads(Path(second["held_out"]).read_text(encoding="utf-8"))
    assert held["m3d_seg_0"]["ids"] == ["synthetic-1"] and len(held["msd_1"]["ids"]) == 1
    assert held["m3d_seg_0"]["source"]["path"] == str(layouts["m3d_seg"])
    # evaluate reuses the run's split: exactly the held-out cases, read from the sources the run trained on
    out = tmp_path / "held_out_eval.json"
    assert main(["evaluate", "--model", second["final"], "--held-out", str(tmp_path / "stage2"), "--tasks", "seg",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    evaluated = json.loads(out.read_text(encoding="utf-8"))
    assert evaluated["data"]["held_out"] == str(tmp_path / "stage2") and len(evaluated["cases"]) == 2
    records = [json.loads(x) for x in (tmp_path / "stage2" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all("seg" in r for r in records)
    load_bundle(second["final"])
    # the cases read were preprocessed once into the cache: plain tensors and JSON, read back without pickle
    cached = list((tmp_path / "cache").glob("*.pt"))
    assert cached and all({"image", "meta"} <= set(torch.load(p, weights_only=True)) for p in cached)


def test_held_out_errors_say_what_to_give(tmp_path):
    from medvlsam2.training.sources import held_out_cases

    with pytest.raises(InputError, match="no held_out.json there"):
        held_out_cases(tmp_path)
    (tmp_path / "held_out.json").write_text(json.dumps({"msd_0": ["case_1"]}))
    with pytest.raises(InputError, match="evaluate those cases with --dataset"):
        held_out_cases(tmp_path)
    (tmp_path / "held_out.json").write_text(json.dumps(
        {"msd_0": {"source": {"reader": "msd", "path": str(tmp_path / "gone")}, "ids": ["case_1"]}}))
    with pytest.raises(InputError, match="no longer exists"):
        held_out_cases(tmp_path / "held_out.json")


def test_dry_run_counts_cases_and_parameters(tmp_path, layouts, capsys):
    from medvlsam2.cli import main

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(_config(tmp_path, layouts, 2, gradient_checkpointing=True,
                                      trainable=["projector", "bridge", "segmenter"])))
    assert main(["train", str(cfg), "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["train"] for s in out["sources"]] == [2, 2, 3, 3]
    assert out["parameters"]["llm"]["trainable"] == 0 and out["parameters"]["llm"]["frozen"] > 0
    assert out["parameters"]["segmenter"]["frozen"] == 0
    est = out["peak_memory_per_rank_estimate"]
    assert est["total_gib"] > 0 and est["terms_gib"]["adamw_states"] > 0
    assert not (tmp_path / "stage2").exists()  # nothing trained or written


def test_fsdp_checkpoint_round_trip_on_two_cpu_ranks(tmp_path):
    """FSDP2 (``fully_shard``) shards the tiny model over two gloo ranks; ``save_checkpoint`` writes each rank's
    shards (torch.distributed.checkpoint) and a full bundle from rank 0; a new run loads the shards back.
    (accelerate's own FSDP needs GPUs; on CPU it falls back to DDP, so the ranks shard with torch directly.)"""
    script = Path(__file__).with_name("fsdp_ranks.py")
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    assert result["sharded"] and result["shards_per_rank"] == [True, True]
    assert result["bundle_matches_full_state"] and result["resumed_equal"] and result["optimizer_equal"]


def test_init_starts_from_released_medsam2_and_med3dvlm_files(tmp_path):
    """init.sam2_checkpoint (official {"model": state_dict} .pt) and init.vlm (a Med3DVLM folder in the published
    layout) load strictly into a fresh model: SAM2, DCFormer, projector and the Qwen2 weights are the files'."""
    from official_sam2 import write_official_checkpoint
    from test_med3dvlm import write_med3dvlm_folder

    from medvlsam2.modeling.med3dvlm import load_med3dvlm
    from medvlsam2.modeling.segmenter import read_state_dict
    from medvlsam2.training.loop import build_model, check_paths, set_trainable

    ckpt = write_official_checkpoint(tmp_path / "MedSAM2_latest.pt")
    vlm = write_med3dvlm_folder(tmp_path / "Med3DVLM-tiny")
    settings = {"model": "tiny", "lora_r": 4, "datasets": [{"reader": "synthetic", "seeds": [0, 2]}]}
    cfg = TrainConfig.from_dict({**settings, "init": {"sam2_checkpoint": str(ckpt), "vlm": str(vlm)}})
    model = build_model(cfg, [])
    released = read_state_dict(ckpt)
    assert all(torch.equal(v, released[k]) for k, v in model.segmenter.state_dict().items())
    assert model.config.segmenter.sam2_config.endswith("hiera_t.yaml") and model.config.vision.kind == "dcformer"
    med = load_med3dvlm(vlm)
    for ours, theirs in ((model.vision_encoder, med.vision_encoder), (model.projector, med.projector)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = model.llm.get_base_model()
    assert torch.equal(base.model.layers[1].mlp.down_proj.weight, med.llm.model.layers[1].mlp.down_proj.weight)
    rows = med.llm.get_input_embeddings().weight.shape[0]
    assert torch.equal(base.get_input_embeddings().weight[:rows], med.llm.get_input_embeddings().weight)
    assert len(model.tokenizer) > rows - 1 and model.seg_token_id >= 0
    params = set_trainable(model, ["llm"])  # LoRA: only the adapters train, the released weights stay
    assert params and all(any(p is q for n, q in model.llm.named_parameters() if "lora_" in n) for p in params)
    with pytest.raises(InputError, match="init.vlm.*gone"):
        check_paths(TrainConfig.from_dict({**settings, "init": {"vlm": str(tmp_path / "gone")}}))
