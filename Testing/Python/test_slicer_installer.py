"""The installation plan and its run in child processes: order, flags, consent text with sizes, progress,
failure with the step named, Cancel that kills the running step (real subprocesses, no network)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

from MedVLSAM2SlicerLib import dependencies, installer  # noqa: E402
from MedVLSAM2SlicerLib.dependencies import InstallStep  # noqa: E402


def test_the_plan_installs_torch_alone_first_sam2_without_deps_last_then_checks_it():
    steps = dependencies.plan(["torch", "sam2", "monai"], have_torch_installer=False)
    assert [s.label for s in steps][:2] == ["light-the-torch (picks the torch build for this GPU)", "torch"]
    assert steps[1].args == ["-m", "light_the_torch", "install", "torch>=2.5.1"]  # no torchvision
    assert not any("torchvision" in a for s in steps for a in s.args)
    assert steps[2].args[-1] == "monai>=1.4" and steps[2].args[:3] == ["-m", "pip", "install"]
    sam2 = steps[4]
    assert sam2.args[-3:] == ["--no-build-isolation", "--no-deps", "sam2==1.1.0"] and sam2.env == {"SAM2_BUILD_CUDA": "0"}
    assert steps[3].args[-2:] == ["setuptools", "wheel"] and steps[5].args[0].endswith("sam2_provenance.py")
    assert [s.label for s in dependencies.plan(["torch"], have_torch_installer=True)] == ["torch"]
    client, = dependencies.plan(["httpx", "numpy"])  # the client alone: one pip call, no torch
    assert client.args[-2:] == ["httpx>=0.27", "numpy>=1.24"]
    assert dependencies.plan([]) == []


def test_the_one_consent_dialog_lists_every_package_with_its_size_and_the_total():
    text = dependencies.consent_message(["torch", "sam2", "SimpleITK"])
    assert "torch>=2.5.1  (about 2500 MB)" in text and "sam2==1.1.0  (about 1 MB)" in text
    assert "SimpleITK>=2.3  (about 55 MB)" in text and "About 2556 MB in all" in text and "Cancel" in text
    assert set(dependencies.DOWNLOAD_MB) <= set(dependencies.CLIENT_REQUIREMENTS) | set(dependencies.SERVER_REQUIREMENTS)


def test_the_packages_are_the_engines_one_requirements_list(tmp_path):
    listed = {**dependencies.CLIENT_REQUIREMENTS, **dependencies.SERVER_REQUIREMENTS}
    lines = [line for line in dependencies.REQUIREMENTS_FILE.read_text().splitlines() if line and line[0] != "#"]
    assert sorted(listed.values()) == sorted(lines + ["sam2==1.1.0"])  # every line, and sam2 from its no-deps line
    req = tmp_path / "requirements.txt"
    req.write_text("# a comment\nnumpy>=2\npyyaml>=6 ; python_version>'3.8'\nhydra-core[extra]>=1.3\n\n"
                   "# no-deps: sam2==9.9\n")
    assert dependencies.read_requirements(req) == {"numpy": "numpy>=2", "yaml": "pyyaml>=6 ; python_version>'3.8'",
                                                   "hydra": "hydra-core[extra]>=1.3", "sam2": "sam2==9.9"}


def drive(run: installer.InstallRun, runner: installer.SubprocessRunner, until, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        runner.poll(0.05)
    assert until(), f"still {run.state} after {timeout} s"


def python_step(label: str, code: str) -> InstallStep:
    return InstallStep(label, ["-c", code], {"STEP_ENV": label})


def run_of(steps):
    progress, done = [], []
    runner = installer.SubprocessRunner()
    run = installer.InstallRun(steps, runner, lambda *p: progress.append(p), lambda ok, msg: done.append((ok, msg)),
                               python=sys.executable)
    return run, runner, progress, done


def test_steps_run_in_order_in_child_processes_with_their_environment_and_report_progress():
    steps = [python_step("one", "import os; print('Collecting', os.environ['STEP_ENV'])"),
             python_step("two", "import os; print('Installing', os.environ['STEP_ENV'])")]
    run, runner, progress, done = run_of(steps)
    run.start()
    drive(run, runner, lambda: done)
    assert done == [(True, "installation done (2 steps)")] and run.state == "done"
    assert (0, 2, "one", "Collecting one") in progress and (1, 2, "two", "Installing two") in progress
    assert progress[-1] == (2, 2, "", "")


def test_a_failing_step_stops_the_run_and_names_it_with_its_output():
    steps = [python_step("first", "print('ok')"),
             python_step("sam2==1.1.0", "import sys; print('ERROR: No matching distribution'); sys.exit(3)"),
             python_step("never", "open('should-not-run', 'w')")]
    run, runner, progress, done = run_of(steps)
    run.start()
    drive(run, runner, lambda: done)
    ok, message = done[0]
    assert not ok and run.state == "failed" and run.index == 1
    assert message == "installing sam2==1.1.0 failed (exit code 3): ERROR: No matching distribution"
    assert not Path("should-not-run").exists()


def test_cancel_kills_the_running_step_and_nothing_after_it_runs(tmp_path):
    marker = tmp_path / "after"
    steps = [python_step("slow download", "import time; print('Downloading', flush=True); time.sleep(60)"),
             python_step("after", f"open({str(marker)!r}, 'w')")]
    run, runner, progress, done = run_of(steps)
    started = time.monotonic()
    run.start()
    drive(run, runner, lambda: any(p[3] == "Downloading" for p in progress))
    run.cancel()
    drive(run, runner, lambda: done, timeout=10)
    assert done == [(False, "installation cancelled during slow download; the steps before it stay installed")]
    assert time.monotonic() - started < 30 and not runner.running and not marker.exists()


def test_a_python_that_cannot_run_fails_the_first_step():
    run, runner, progress, done = run_of([python_step("torch", "pass")])
    run.python = "/nonexistent/PythonSlicer"
    run.start()
    drive(run, runner, lambda: done)
    assert done[0][0] is False and "exit code 127" in done[0][1] and "cannot run /nonexistent/PythonSlicer" in done[0][1]


def test_the_sam2_check_step_runs_as_a_child_and_passes_on_this_environment():
    step = dependencies.plan(["sam2"])[-1]
    run, runner, progress, done = run_of([step])
    run.start()
    drive(run, runner, lambda: done)
    assert done == [(True, "installation done (1 steps)")]
    assert any("60 files equal https://github.com/facebookresearch/sam2" in p[3] for p in progress)
