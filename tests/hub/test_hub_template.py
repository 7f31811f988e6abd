"""The card's wording is a template shipped as package data: a wheel built from the sources carries it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from hf_calibprune.hub.card import TEMPLATE

REPO = Path(__file__).resolve().parents[2]


def test_a_built_wheel_ships_the_card_template(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "hf_calibprune", source / "hf_calibprune", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    inside = TEMPLATE.relative_to(REPO).as_posix()
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(inside) == TEMPLATE.read_bytes()
