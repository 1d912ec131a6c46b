"""`dataset_name: digits | emoji` end to end: training builds the dataset into cache_dir and trains on it, the model
card carries the dataset's licence and attribution, and scripts/evaluate.py learns the dataset from the model folder
and runs its judge (eval.json, the plot, the grids)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, TINY

ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
QUICK = ["max_train_steps=2", "validation_steps=null", "checkpointing_steps=null", "train_batch_size=4"]


def run(*command: str, timeout: int = 600) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **ENV})  # fmt: skip


def train(tmp_path, *overrides: str):
    out = tmp_path / "model"
    result = run(str(ROOT / "scripts" / "train.py"), "--config", TINY, f"output_dir={out}",
                 f"cache_dir={tmp_path / 'cache'}", *QUICK, *overrides)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_digits_train_card_and_judge(tmp_path):
    pytest.importorskip("sklearn", reason="pip install 'sculpt[digits]'")
    out = train(tmp_path, "dataset_name=digits")
    assert list((tmp_path / "cache" / "sculpt-builtin").glob("digits-*"))  # built once into cache_dir
    card = (out / "README.md").read_text()
    assert "sculpt's built-in handwritten digits" in card and "Optical Recognition of Handwritten Digits" in card
    result = run(str(ROOT / "scripts" / "evaluate.py"), str(out), "--steps", "1", "--per_class", "1",
                 "--inpaint_per_class", "1", "--guidance", "1,3", "--output_dir", str(tmp_path / "eval"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class accuracy" in result.stdout and "bottom_half" in result.stdout
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(metrics["generation"]) == {"1", "3"} and set(metrics["inpainting"]["masks"]) == {
        "bottom_half", "left_half", "center_square"}  # fmt: skip
    for name in metrics["files"]:
        assert (tmp_path / "eval" / name).is_file(), name
    assert {"eval_accuracy.png", "eval_inpaint_bottom_half.png"} <= set(metrics["files"])


def test_emoji_train_card_and_judge(tmp_path):
    pytest.importorskip("resvg_py", reason="pip install 'sculpt[emoji]'")
    out = train(tmp_path, "dataset_name=emoji", "emoji_groups=[Animals & Nature]")
    card = (out / "README.md").read_text()
    assert "sculpt's built-in emoji dataset" in card and "All emojis designed by OpenMoji" in card
    assert "CC BY-SA 4.0" in card
    result = run(str(ROOT / "scripts" / "evaluate.py"), str(out), "--steps", "1", "--num_captions", "8",
                 "--guidance", "1,3", "--output_dir", str(tmp_path / "eval"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top-5" in result.stdout and "retrieval among 160" in result.stdout  # the record's groups, found again
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert metrics["settings"]["gallery_size"] == 160 and set(metrics["scores"]) == {"1", "3"}
    assert (tmp_path / "eval" / "eval_grid_g1.png").is_file() or (tmp_path / "eval" / "eval_grid_g3.png").is_file()


def test_evaluate_refuses_a_model_of_a_dataset_no_judge_reads(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    (folder / "config.yaml").write_text("dataset_name: someone/photos\n")
    result = run(str(ROOT / "scripts" / "evaluate.py"), str(folder))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"evaluate.py: error: --dataset: MODEL_FOLDER {folder} learned dataset_name 'someone/photos' (its "
        "config.yaml), which no judge reads; pass --dataset shapes|digits|emoji to judge it as one of those.")
