"""``python -m hf_calibprune calibration list|show`` in a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hf_calibprune.calibration import SOURCES

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "hf_calibprune", "calibration", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_list_prints_every_source():
    result = _run("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == SOURCES.names()
    gsm8k = next(line for line in lines if line.startswith("gsm8k "))
    boolq = next(line for line in lines if line.startswith("boolq "))
    assert "cot: yes" in gsm8k and "cot: no" in boolq


def test_show_renders_cot_samples_from_a_local_copy(fixtures_dir):
    result = _run("show", "gsm8k", "--format", "cot", "--data-files", str(fixtures_dir / "gsm8k" / "train.jsonl"), "-n", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("===== gsm8k:cot sample") == 2
    assert result.stdout.count("So the answer is") == 2 and "Question: " in result.stdout


def test_show_errors_exit_2_with_a_message(tmp_path):
    offline = _run("show", "anli_r3", env_extra={"HF_HUB_OFFLINE": "1", "HF_CALIBPRUNE_DATA_DIR": str(tmp_path)})
    assert offline.returncode == 2 and "facebook/anli" in offline.stderr and "Traceback" not in offline.stderr


def test_show_parses_in_process(fixtures_dir, capsys, no_hub):
    """The same command through the argparse entry point, without a subprocess (fast path for the options)."""
    from hf_calibprune.cli import main

    code = main(["calibration", "show", "esnli", "--format", "icl", "--shots", "2", "--data-dir", str(fixtures_dir), "-n", "1", "--seed", "3"])
    assert code == 0 and capsys.readouterr().out.count("Premise: ") == 2
    assert main(["calibration", "show", "gsm8kk"]) == 2
    assert "Did you mean 'gsm8k'?" in capsys.readouterr().err
