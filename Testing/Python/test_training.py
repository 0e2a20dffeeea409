"""Training pipeline: losses, one step per stage lowers the loss on a fixed batch, bit-exact resume,
config validation, and the trained bundle loads and segments through ``Session``."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from medvlsam2.config import tiny  # noqa: E402
from medvlsam2.data.case import ClosedQA, CTCase, OpenQA, Referring  # noqa: E402
from medvlsam2.errors import CheckpointError, InputError  # noqa: E402
from medvlsam2.io.volume import Volume  # noqa: E402
from medvlsam2.training import losses  # noqa: E402
from medvlsam2.training.batches import plan_step, prepare_case  # noqa: E402
from medvlsam2.training.config import TrainConfig, load_train_config  # noqa: E402

STRUCTURES = {"liver": [1], "spleen": [2], "stomach": [7]}


def make_case(seed: int) -> CTCase:
    """Two ellipsoid 'organs' on 8x64x64 with noise, a report and VQA (stand-in for the phantoms)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[:8, :64, :64]
    lab = np.zeros((8, 64, 64), np.uint8)
    cj, ci = rng.integers(22, 42, 2)
    lab[((j - cj) ** 2 + (i - ci) ** 2 < 100) & (k >= 2) & (k <= 6)] = 1
    lab[((j - 50) ** 2 + (i - 14) ** 2 < 30) & (k >= 1)] = 2
    hu = np.where(lab == 1, 60, np.where(lab == 2, 160, -100)) + rng.normal(0, 5, lab.shape)
    return CTCase(f"c{seed}", Volume(hu.astype(np.int16), (2.0, 2.0, 5.0)), lab, {1: "liver", 2: "spleen"},
                  report="The liver is normal. The spleen is normal.",
                  vqa_closed=[ClosedQA("Is there a lesion?", ["yes", "no", "left", "right"], "B")],
                  vqa_open=[OpenQA("Which organ is largest?", "liver")], referring=[Referring("the largest organ", 1)])


SYNTHETIC = {"reader": "synthetic", "seeds": [0, 4], "shape": [8, 64, 64]}


def small_config(tmp_path, **kw) -> TrainConfig:
    base = dict(stage=2, model="tiny", output_dir=str(tmp_path / "run"), max_steps=4, lr=1e-3, warmup_steps=1,
                datasets=[SYNTHETIC], cases_per_step=2, cache_dir=str(tmp_path / "cache"), text_cases=2, seg_clips=2,
                interactive_clips=1, clip_len=3, probes=2, log_every=1, checkpoint_every=2, cpu=True)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_losses_prefer_the_right_mask_and_score():
    target = torch.zeros(2, 8, 8)
    target[0, 2:6, 2:6] = 1  # row 0 present, row 1 absent
    good = torch.where(target[:, None].expand(2, 3, 8, 8) > 0, 8.0, -8.0).clone()
    bad = -good
    ious = torch.ones(2, 3)
    present_score = torch.tensor([[5.0], [-5.0]])
    ok = losses.multimask_loss(good, ious, present_score, target)
    wrong = losses.multimask_loss(bad, ious, present_score, target)
    flipped = losses.multimask_loss(good, ious, -present_score, target)
    assert ok["loss"] < wrong["loss"] and ok["object"] < flipped["object"]
    assert losses.hard_dice(good[:, 0], target)[0] == 1.0
    assert losses.dice_loss(good[:1, 0], target[:1]) < 0.01


def test_text_prompts_train_every_candidate_not_just_the_best():
    # One candidate is the target, the other two are the mirror-image organ: best-of is satisfied,
    # every-candidate is not (so a shared "kidney" token cannot serve both "left" and "right").
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 0:3] = 1
    mirror = target.flip(-1)
    multi = torch.stack([target, mirror, mirror], 1) * 16 - 8
    ious, score = torch.ones(1, 3), torch.tensor([[5.0]])
    best = losses.multimask_loss(multi, ious, score, target)["mask"]
    every = losses.multimask_loss(multi, ious, score, target, every_candidate=True)["mask"]
    assert best < 0.01 and every > 0.5


def test_trainable_accepts_parts_of_modules(tmp_path):
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.training.loop import set_trainable

    model = MedVLSAM2.from_config(tiny())
    params = set_trainable(model, ["bridge", "segmenter.sam_mask_decoder"])
    expected = list(model.bridge.parameters()) + list(model.segmenter.sam_mask_decoder.parameters())
    assert {id(p) for p in params} == {id(p) for p in expected}
    with pytest.raises(InputError, match="unknown trainable"):
        small_config(tmp_path, trainable=("segmentr.sam_mask_decoder",))


def test_config_rejects_held_out_seeds_and_unknown_keys(tmp_path):
    with pytest.raises(InputError, match="held out"):
        small_config(tmp_path, datasets=[{"reader": "synthetic", "seeds": [0, 100001]}])
    (tmp_path / "c.yaml").write_text("stage: 2\nbogus: 1\n")
    with pytest.raises(InputError, match="bogus"):
        load_train_config(tmp_path / "c.yaml")
    (tmp_path / "ok.yaml").write_text("stage: 1\nmodel: tiny\ndatasets: [{reader: synthetic, seeds: [0, 50]}]\n")
    cfg = load_train_config(tmp_path / "ok.yaml", max_steps=7)
    assert cfg.stage == 1 and cfg.datasets[0].seeds == (0, 50) and cfg.max_steps == 7


def test_plan_is_a_function_of_seed_and_step():
    cfg = tiny()
    pool = [prepare_case(make_case(s), cfg, STRUCTURES) for s in range(3)]
    a, b, c = (plan_step(0, s, pool, 2, 2, 2, 1, 3, 2) for s in (5, 5, 6))
    assert repr(a) == repr(b) and repr(a) != repr(c)
    for clip in a.seg + a.interactive:
        assert len(clip.slices) == 3 and abs(clip.slices[1] - clip.slices[0]) == 1
    # the liver referring expression is a target too, without a doubled article
    assert any(t.phrase == "largest organ" for t in pool[0].present)


def test_region_rows_come_through_the_disk_cache_into_steps():
    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.data.transforms import case_record, record_case

    case = record_case(case_record(generate_case(3, shape=(8, 32, 32), spacing=(11.2, 11.2, 20.0))))
    pool = [prepare_case(case, dataclasses.replace(tiny(), region_input=True), STRUCTURES)]
    assert sum(len(row) > 2 for row in pool[0].texts) >= 6  # what / size / cystic about each organ at least
    rows = [r for s in range(12) for r in plan_step(0, s, pool, 2, 1, 0, 0, 1, 0).text]
    assert any(len(r) == 4 for r in rows) and any(len(r) == 3 for r in rows)  # region rows among the others


def test_a_run_that_trains_the_region_encoder_marks_it_trained(tmp_path):
    from medvlsam2.checkpoint import load_bundle, save_bundle
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.training.loop import latest_checkpoint, train

    untrained = MedVLSAM2.from_config(tiny()).enable_region_input(["lesion"])
    save_bundle(untrained, tmp_path / "init")
    assert not load_bundle(tmp_path / "init").region_trained
    train(small_config(tmp_path, stage=1, init_from=str(tmp_path / "init"), trainable=["region"], max_steps=1,
                       checkpoint_every=1), progress=False)
    assert load_bundle(latest_checkpoint(tmp_path / "run")).region_trained


def test_absent_rate_asks_for_targets_the_case_lacks(tmp_path):
    pool = [prepare_case(make_case(s), tiny(), STRUCTURES) for s in range(3)]
    assert all(p.absent for p in pool)
    def absent_share(rate):
        clips = [c for s in range(40) for c in plan_step(0, s, pool, 2, 0, 4, 0, 2, 2, absent_rate=rate).seg]
        return sum(c.target in pool[c.case].absent for c in clips) / len(clips)
    assert absent_share(0.0) == 0.0 and 0.3 < absent_share(0.5) < 0.7
    with pytest.raises(InputError, match="absent_rate"):
        small_config(tmp_path, absent_rate=1.5)


def test_target_weights_oversample_and_lr_multipliers_scale_groups(tmp_path):
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.training.loop import param_groups, set_trainable

    pool = [prepare_case(make_case(s), tiny(), STRUCTURES) for s in range(3)]
    plans = [plan_step(0, s, pool, 2, 1, 4, 0, 2, 2, target_weights={"spleen": 1000.0}) for s in range(10)]
    phrases = [clip.target.phrase for plan in plans for clip in plan.seg]
    assert phrases.count("spleen") >= 0.85 * len(phrases)  # uniform: about one in three
    # a referring expression takes its structure's weight: "largest organ" names the liver's label
    plans = [plan_step(0, s, pool, 2, 1, 4, 0, 2, 2, target_weights={"liver": 1000.0}) for s in range(10)]
    phrases = [clip.target.phrase for plan in plans for clip in plan.seg]
    assert {"liver", "largest organ"} == set(phrases)
    model = MedVLSAM2.from_config(tiny())
    set_trainable(model, ["llm", "bridge"])
    cfg = small_config(tmp_path, lr_multipliers={"llm": 10.0})
    groups = param_groups(model, cfg)
    llm_ids = {id(p) for p in model.llm.parameters()}
    assert {g["lr_scale"] for g in groups if id(g["params"][0]) in llm_ids} == {10.0}
    assert {g["lr_scale"] for g in groups if id(g["params"][0]) not in llm_ids} == {1.0}
    assert sum(len(g["params"]) for g in groups) == len(list(model.llm.parameters()) + list(model.bridge.parameters()))
    with pytest.raises(InputError, match="lr_multipliers"):
        small_config(tmp_path, lr_multipliers={"decoder": 2.0})


@pytest.mark.parametrize("stage", [1, 2])
def test_steps_lower_the_loss_on_a_fixed_batch(stage):
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.training.loop import _set_modes
    from medvlsam2.training.stage1 import stage1_losses
    from medvlsam2.training.stage2 import stage2_losses

    torch.manual_seed(0)
    cfg = tiny()
    model = MedVLSAM2.from_config(cfg)
    pool = [prepare_case(make_case(s), cfg, STRUCTURES) for s in range(2)]
    plan = plan_step(0, 0, pool, stage, 2, 2, 1, 3, 2)
    _set_modes(model)
    fn = (lambda: stage1_losses(model, pool, plan, torch.device("cpu"))) if stage == 1 else \
        (lambda: stage2_losses(model, pool, plan, torch.device("cpu")))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = None
    for _ in range(4):
        torch.manual_seed(1)  # same clicks/jitter each time: a truly fixed batch
        logs = fn()
        first = float(logs["loss"]) if first is None else first
        opt.zero_grad()
        logs["loss"].backward()
        opt.step()
    torch.manual_seed(1)
    assert float(fn()["loss"]) < first
    if stage == 2:  # the [SEG] bridge receives gradient from the segmentation losses
        opt.zero_grad()
        torch.manual_seed(1)
        logs = fn()
        (logs["loss"] - logs["lm"] * 0).backward()
        assert model.bridge.mlp[0].weight.grad.abs().sum() > 0


def test_segmentation_requests_are_language_rows_and_stage2_reads_only_the_clips_seg_states():
    """Every case's chat rows hold "Segment the X." -> "It is [SEG] X." for its present targets; in stage 2 such a
    row among the text rows is trained by the LM loss only, and the clips still get their own [SEG] states."""
    from dataclasses import replace

    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.modeling.prompting import seg_answer, segment_question
    from medvlsam2.training.stage2 import stage2_losses

    cfg = tiny()
    pool = [prepare_case(make_case(s), cfg, STRUCTURES) for s in range(2)]
    assert (segment_question("liver"), seg_answer("liver")) in pool[0].texts
    assert (segment_question("stomach"), seg_answer("stomach")) not in pool[0].texts  # absent from the case
    plan = plan_step(0, 0, pool, 2, 2, 2, 1, 3, 2)
    plan = replace(plan, text=[(1, segment_question("spleen"), seg_answer("spleen"))])
    torch.manual_seed(0)
    logs = stage2_losses(MedVLSAM2.from_config(cfg), pool, plan, torch.device("cpu"))
    assert torch.isfinite(logs["loss"]) and "text_mask" in logs


def _params(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_resume_is_bit_exact(tmp_path):
    from medvlsam2.training.loop import latest_checkpoint, train

    straight = small_config(tmp_path / "a", workers=1)  # a worker process prepares the batches: same data
    train(straight)
    split = small_config(tmp_path / "b")
    with pytest.raises(CheckpointError):
        train(split, resume=True)
    train(split, max_steps=2)
    assert latest_checkpoint(split.output_dir).name == "step_0000002"
    summary = train(split, resume=True)
    assert summary["started_at_step"] == 2
    a, b = _params(latest_checkpoint(straight.output_dir)), _params(latest_checkpoint(split.output_dir))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = _params(tmp_path / "a" / "run" / "checkpoints" / "step_0000004")
    lines = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all(np.isfinite(x["loss"]) for x in lines)
    assert first  # the checkpoint is a loadable bundle too
    from medvlsam2.checkpoint import load_bundle

    load_bundle(tmp_path / "a" / "run" / "checkpoints" / "step_0000004")


def test_export_half_bundle_loads_close_to_the_checkpoint(tmp_path):
    from medvlsam2.checkpoint import load_bundle
    from medvlsam2.training.loop import export_bundle, latest_checkpoint, train

    cfg = small_config(tmp_path, stage=1, max_steps=1)
    train(cfg)
    ckpt = latest_checkpoint(cfg.output_dir)
    out = export_bundle(ckpt, tmp_path / "bundle", half=True, metadata={"note": "test"})
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert meta["weights_dtype"] == "float16" and "not for clinical images" in meta["trained_on"]
    assert (out / "model.safetensors").stat().st_size < 0.6 * (ckpt / "model.safetensors").stat().st_size
    full, half = load_bundle(ckpt), load_bundle(out)
    for (name, a), b in zip(full.named_parameters(), half.parameters()):
        assert b.dtype == torch.float32 and torch.allclose(a, b, atol=1e-2, rtol=1e-2), name


@pytest.mark.parametrize("name", ["demo_stage1", "demo_stage2", "demo_stage1_cpu_seg_answer", "demo_stage2_cpu_seg_answer",
                                  "demo_stage2_cpu_interactive", "demo_stage2_cpu_findings_cached", "paper_stage1",
                                  "paper_stage2"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer" / "configs" / "train" / f"{name}.yaml"
    cfg = load_train_config(path)
    assert cfg.datasets and cfg.stage == int(name.split("stage")[1][0])


def test_cli_train_runs_a_step(tmp_path, capsys):
    from medvlsam2.cli import main

    (tmp_path / "c.json").write_text(json.dumps({"stage": 1, "model": "tiny", "datasets": [SYNTHETIC], "text_cases": 2,
                                                 "cases_per_step": 2, "cache_dir": str(tmp_path / "cache"),
                                                 "cpu": True, "output_dir": str(tmp_path / "run")}))
    assert main(["train", str(tmp_path / "c.json"), "--max-steps", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and summary["final"].endswith("step_0000001")
    assert main(["train", str(tmp_path / "missing.yaml")]) == 1


def test_two_processes_train_together_on_cpu(tmp_path):
    """Two ranks through PyTorch's own launcher (torchrun; gloo on CPU): accelerate sees the world and
    wraps the model in DDP, as ``accelerate launch`` does on GPUs (its --cpu mode starts one process)."""
    import subprocess
    import sys

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"stage": 2, "model": "tiny", "datasets": [SYNTHETIC], "cases_per_step": 2,
                                  "cache_dir": str(tmp_path / "cache"), "text_cases": 1,
                                  "seg_clips": 1, "interactive_clips": 1, "clip_len": 2, "probes": 2, "max_steps": 2,
                                  "log_every": 1, "cpu": True, "output_dir": str(tmp_path / "run")}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medvlsam2", "train", str(config)]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    # CI may run with an ASCII locale while tqdm draws UTF-8 bars: decode explicitly.
    done = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step_0000002" / "metadata.json").read_text(encoding="utf-8"))
    assert meta["machine"].endswith("x2")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # logged once, by the main process


def test_every_shipped_training_recipe_parses():
    """The recipes under configs/train are documentation users run: each must load (accelerate's own files aside)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer" / "configs" / "train"
    recipes = [p for p in sorted(root.glob("*.yaml")) if not p.name.startswith("accelerate_")]
    assert len(recipes) >= 8
    for path in recipes:
        assert load_train_config(path).max_steps > 0, path.name
