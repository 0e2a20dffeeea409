"""Which server modes the panel offers on each Slicer's Python, decided before anything is installed."""

from __future__ import annotations

import re
import sys
from importlib.metadata import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

from MedVLSAM2SlicerLib import dependencies, serving  # noqa: E402

SLICER_5_8, SLICER_5_10 = (3, 9, 10), (3, 12, 1)  # the Pythons Slicer ships


def offered(version, external="") -> list[str]:
    return [m.name for m in serving.server_modes(version, external) if m.available]


def test_slicer_5_8_gets_the_client_only_and_is_told_why():
    modes = serving.server_modes(SLICER_5_8)
    assert offered(SLICER_5_8) == ["remote"]
    local = next(m for m in modes if m.name == "local")
    assert "3.10" in local.reason and "3.9" in local.reason and "Slicer 5.10" in local.reason
    plan = serving.plan_start("remote", SLICER_5_8, " https://gpu-host:8000 ")
    assert plan.remote_url == "https://gpu-host:8000"
    assert set(plan.needs) == set(dependencies.CLIENT_REQUIREMENTS)  # no torch, no sam2: nothing over 3.9
    with pytest.raises(ValueError, match="needs Python 3.10"):
        serving.plan_start("local", SLICER_5_8)  # refused before any installation


def test_slicer_5_10_offers_both_local_first_and_a_local_server_needs_the_server_packages():
    assert offered(SLICER_5_10) == ["local", "remote"]
    plan = serving.plan_start("local", SLICER_5_10)
    assert {"torch", "sam2", "transformers", "numpy", "httpx"} <= set(plan.needs)
    assert serving.plan_start("remote", SLICER_5_10, "http://h:1").needs == tuple(dependencies.CLIENT_REQUIREMENTS)


def test_an_external_python_makes_the_local_server_possible_on_an_old_slicer_with_the_client_only():
    assert offered(SLICER_5_8, external="/opt/py312/bin/python") == ["local", "remote"]
    plan = serving.plan_start("local", SLICER_5_8, external_python="/opt/py312/bin/python")
    assert "torch" not in plan.needs and set(plan.needs) == set(dependencies.CLIENT_REQUIREMENTS)


def test_bad_choices_are_refused_with_what_to_change():
    with pytest.raises(ValueError, match="URL"):
        serving.plan_start("remote", SLICER_5_10, "  ")
    with pytest.raises(ValueError, match="unknown server mode"):
        serving.plan_start("cloud", SLICER_5_10)
    assert offered((3, 8, 10)) == []  # a Slicer 4 Python: nothing works, and each mode says so
    assert all("5.6" in m.reason for m in serving.server_modes((3, 8, 10)))


def python_floor(spec: str) -> tuple[int, int]:
    match = re.search(r">=\s*(\d+)\.(\d+)", spec or "")
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def test_the_python_floors_match_the_packages():
    """The local floor is pyproject's requires-python and what sam2 and torch declare; the client's packages
    reach lower (numpy/httpx/zstandard releases for 3.9 exist; test_client_py39 runs them)."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert python_floor(re.search(r'requires-python\s*=\s*"([^"]+)"', pyproject).group(1)) == serving.LOCAL_SERVER_MIN_PYTHON
    for dist in ("sam2", "torch"):
        assert python_floor(metadata(dist)["Requires-Python"]) <= serving.LOCAL_SERVER_MIN_PYTHON, dist
    assert max(python_floor(metadata(d)["Requires-Python"]) for d in ("sam2", "torch")) == serving.LOCAL_SERVER_MIN_PYTHON
    assert serving.CLIENT_MIN_PYTHON < serving.LOCAL_SERVER_MIN_PYTHON
