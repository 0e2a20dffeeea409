"""`medvlsam2 ask` streams an answer; `medvlsam2 report` writes a Markdown draft with its notice."""

import numpy as np
import pytest
import SimpleITK as sitk

from medvlsam2.cli import main
from medvlsam2.report.writer import NOTICE


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    rng = np.random.default_rng(0)
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(-200, 200, (6, 40, 40)).astype(np.int16)), str(path))
    return str(path)


def test_ask_streams_an_answer(ct, capsys):
    assert main(["ask", ct, "What is this?", "--model", "tiny"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip(), "an answer is printed"
    assert "random" in captured.err  # the tiny config's weights are random, and the user is told


def test_ask_about_a_box_needs_region_input(ct, capsys):
    assert main(["ask", ct, "What is this?", "--box", "2,2,1,20,20,4", "--model", "tiny"]) == 1
    assert "cannot take a region" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["   "], "question is empty"), (["what?", "--box", "1,2,3"], "inside the volume")])
def test_ask_rejects_bad_input(ct, capsys, argv, message):
    assert main(["ask", ct, *argv, "--model", "tiny"]) == 1
    assert message in capsys.readouterr().err


def test_report_writes_markdown_with_the_notice(ct, tmp_path, capsys):
    out = tmp_path / "r" / "report.md"
    assert main(["report", ct, "-o", str(out), "--model", "tiny"]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Draft findings report") and NOTICE in text
    assert capsys.readouterr().out.split("wrote")[0].strip() in text  # what streamed is what was saved
