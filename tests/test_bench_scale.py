"""scripts/bench_scale.py: a real (tiny) run of two data paths, map-style and streamed shards, measured from launched
trainings' step stamps; and every bad argument (one line, exit code 2, nothing written)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "bench_scale.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def load_script():
    spec = importlib.util.spec_from_file_location("bench_scale_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        load_script().parse_args(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def run(*arguments, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


def test_map_style_and_streamed_rows_are_measured_and_tabled(tmp_path):
    out = tmp_path / "bench"
    done = run("--sizes", "32", "--batch", "8", "--steps", "2", "--warmup", "1", "--variants", "in_memory,streaming",
               "--output_dir", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    assert [(r["size"], r["variant"]) for r in result["rows"]] == [(32, "in_memory"), (32, "streaming")]
    for row in result["rows"]:
        assert row["steps"] == 3 and row["world_size"] == 1
        assert row["images_per_s"] > 0 and 0 < row["startup_s"] < row["wall_s"]
        assert 100 < row["peak_rss_mib"] < 8192  # a real process's peak: torch alone is a few hundred MiB
    assert len(list((out / "parts" / "32" / "shards").glob("*.parquet"))) == 1
    text = (out / "bench.md").read_text()
    assert "| 32 | streamed parquet shards, no cache |" in text and "| 1.00 |" in text  # map-style is its own 1.00
    assert text in done.stdout  # printed as written
    again = run("--sizes", "32", "--batch", "8", "--steps", "1", "--warmup", "1", "--variants", "in_memory",
                "--output_dir", str(out))  # its own folder: replaced, parts reused
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(json.loads((out / "bench.json").read_text())["rows"]) == 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--sizes", "4k"], "--sizes: '4k' is not a comma-separated list of image counts"),
        (["--sizes", "0"], "--sizes: '0' must list counts >= 1"),
        (["--sizes", "64,64"], "--sizes: '64,64' lists an entry twice"),
        (["--sizes", "16", "--batch", "64"], "--sizes: 16 images are fewer than one --batch of 64"),
        (["--variants", "ram"], "--variants: 'ram' must be a comma-separated list of in_memory, memory_cache"),
        (["--steps", "0"], "--steps: 0 must be >= 1"),
        (["--batch", "9", "--sizes", "64", "--multinode"], "--batch: 9 must be even with --multinode"),
        (["--run_timeout", "0"], "--run_timeout: 0.0 must be > 0"),
        (["learning_rate"], "unexpected argument 'learning_rate'; config settings are given as key=value"),
        (["no_such_key=1"], "--config: "),
        (["latent_cache=ram", "--variants", "in_memory"], "--config: `latent_cache`"),
    ],
)
def test_bad_arguments_fail_before_any_work(capsys, tmp_path, arguments, message):
    out = tmp_path / "bench"
    err = parse_error(capsys, *arguments, "--output_dir", str(out))
    assert err.startswith("bench_scale.py: error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_folder_it_did_not_make_is_refused(capsys, tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    assert "was not made by this benchmark" in parse_error(capsys, "--output_dir", str(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "keep"
