"""scripts/bench_lora.py's arguments: each bad one is one line on stderr and exit code 2, before anything runs (the
benchmark itself trains for minutes: docs/lora.md has its measured table and command)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPT = str(ROOT / "scripts" / "bench_lora.py")


@pytest.mark.parametrize("extra, match", [
    (["--per_caption", "0"], "--per_caption: 0 must be >= 1"),
    (["--original_per_caption", "0"], "--original_per_caption: 0 must be >= 1"),
    (["--steps", "x"], "--steps: invalid int value"),
])  # fmt: skip
def test_bad_arguments_are_one_line_exit_2(tmp_path, extra, match):
    (tmp_path / "model_index.json").write_text("{}")
    result = subprocess.run([sys.executable, SCRIPT, "--base", str(tmp_path), "--out", str(tmp_path / "out"), *extra],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and match in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_base_without_a_pipeline_is_named(tmp_path):
    result = subprocess.run([sys.executable, SCRIPT, "--base", str(tmp_path)], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2 and "--base:" in result.stderr and "model_index.json" in result.stderr


def test_a_config_without_a_new_concept_is_named(tmp_path):
    """configs/shapes.yaml teaches nothing outside the base grammar: nothing to measure, said before any training."""
    (tmp_path / "model_index.json").write_text("{}")
    result = subprocess.run([sys.executable, SCRIPT, "--base", str(tmp_path), "--out", str(tmp_path / "out"),
                             "--config", str(ROOT / "configs" / "shapes.yaml")], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2 and "--config:" in result.stderr and "names no new colour" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_the_concepts_of_the_shipped_configs():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_lora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.concept(ROOT / "configs" / "lora-shapes.yaml") == {
        "colors": [], "backgrounds": ["yellow"], "label": "yellow background"}
    assert module.concept(ROOT / "configs" / "lora-shapes-orange.yaml") == {
        "colors": ["orange"], "backgrounds": [], "label": "orange"}
    assert module.concept(ROOT / "configs" / "lora-shapes-replay.yaml") == {
        "colors": [], "backgrounds": ["yellow"], "label": "yellow background"}


def test_a_replay_config_without_its_class_images_is_named_before_anything_runs(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    result = subprocess.run([sys.executable, SCRIPT, "--base", str(tmp_path), "--out", str(tmp_path / "out"),
                             "--config", str(ROOT / "configs" / "lora-shapes-replay.yaml"),
                             f"class_data_dir={tmp_path / 'missing'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"--config: `class_data_dir`: '{tmp_path / 'missing'}' is not a folder" in result.stderr
    assert not (tmp_path / "out").exists()
