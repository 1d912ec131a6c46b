"""The 2-D course demos (training/course/toy2d.py, scripts/toy2d.py): a small run end to end through the CLI's `main`, the
energy distance and its floor against their definitions, the paper's 1-based snapshot times against the scheduler's
0-based indices, determinism, and bad arguments (one line on stderr, exit code 2, nothing written)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from training.course.toy2d import (
    FIGURE_SIZE,
    NoisePredictor,
    Toy2DConfig,
    energy_distance,
    evaluate,
    forward_snapshots,
    make_scheduler,
    sample,
    sample_data,
    snapshot_times,
    untrained_distance,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "toy2d.py"
# A few seconds on 2 CPU cores: 300 training steps, 500 points a side estimated from 1,000 generated.
SMALL = ["--train_steps", "300", "--batch_size", "256", "--num_samples", "500", "--num_generated", "1000",
         "--num_data", "2000", "--no_progress"]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """As `run` does: these models and point clouds are too small to share out, and on a busy 2-core machine two
    threads waiting on each other made every step ~25x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def load_script():
    spec = importlib.util.spec_from_file_location("toy2d_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(*argv: str) -> dict:
    """scripts/toy2d.py's main in this process; returns the summary line it prints."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert load_script().main(list(argv)) == 0
    return json.loads(stdout.getvalue())


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("toy2d") / "moons"
    run_main("--dataset", "moons", "--output_dir", str(output_dir), *SMALL)
    return output_dir


# ----------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------
def test_small_run_writes_figures_and_metrics(small_run):
    for name in ("forward.png", "reverse.png"):
        with PIL.Image.open(small_run / name) as image:
            assert image.size == FIGURE_SIZE
            pixels = np.asarray(image.convert("L"), dtype=np.float32)
        assert pixels.std() > 10, f"{name} looks blank"  # ten panels of points, not an empty canvas
    metrics = json.loads((small_run / "metrics.json").read_text())
    assert metrics["dataset"] == "moons"
    assert metrics["ratio"] == pytest.approx(metrics["distance"] / metrics["floor"])
    assert metrics["floor"] > 0 and metrics["distance"] > 0
    assert metrics["num_generated"] == 1000 and metrics["num_data"] == 2000
    assert metrics["config"]["train_steps"] == 300 and metrics["config"]["num_samples"] == 500
    assert set(metrics["seconds"]) == {"train", "sample", "score", "total"}


def test_trained_model_beats_the_untrained_one(small_run):
    metrics = json.loads((small_run / "metrics.json").read_text())
    untrained = untrained_distance(Toy2DConfig(**metrics["config"]))
    # Untrained, ε_θ ≈ 0 and Algorithm 2 divides by √α_t at every step: the samples fly far off (ratio ~2e5).
    assert untrained["ratio"] > 1000
    assert metrics["distance"] < untrained["distance"] / 1000
    # 300 steps put the points on the moons, if not yet in the right proportions (4.7 at 500 points a side; the
    # full run's 4,000 steps reach ~1 at 5,000, where the ratio is 10x more sensitive).
    assert metrics["ratio"] < 10, metrics["ratio"]


def test_same_seed_same_metrics_other_seed_other_metrics(small_run, tmp_path):
    first = json.loads((small_run / "metrics.json").read_text())
    again = run_main("--dataset", "moons", "--output_dir", str(tmp_path / "again"), *SMALL)
    other = run_main("--dataset", "moons", "--output_dir", str(tmp_path / "other"), *SMALL, "--seed", "1")
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())
    for metrics in (first, second):
        metrics.pop("seconds")
        metrics["config"].pop("output_dir")
    assert second == first  # every number, to the last bit
    assert again["ratio"] == first["ratio"]
    assert other["distance"] != first["distance"]


# ----------------------------------------------------------------------------------------------------------------
# The distance
# ----------------------------------------------------------------------------------------------------------------
def pairwise_energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """The definition, from the full distance matrices."""
    x, y = torch.from_numpy(x).double(), torch.from_numpy(y).double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def mean_pairwise_distance(x: np.ndarray) -> float:
    """E|X - X'| over pairs i ≠ j."""
    x = torch.from_numpy(x).double()
    return float(torch.cdist(x, x).sum() / (len(x) * (len(x) - 1)))


@pytest.mark.parametrize("dataset", ["moons", "swiss_roll", "s_curve"])
def test_energy_distance_matches_the_pairwise_definition(dataset):
    rng = np.random.default_rng(0)
    x, y = sample_data(dataset, 1500, rng), sample_data(dataset, 1000, rng)  # unequal sizes on purpose
    shifted = y + np.float32(0.3)
    for a, b in ((x, y), (x, shifted)):
        assert energy_distance(a, b) == pytest.approx(pairwise_energy_distance(a, b), rel=1e-3)


def test_energy_distance_zero_floor_sized_and_large():
    rng = np.random.default_rng(0)
    n = 500
    x = sample_data("moons", n, rng)
    assert abs(energy_distance(x, x.copy())) < 1e-12  # identical clouds
    # Two independent samples: not 0 but, on average, the floor 2 E|X - X'| / n of the V-statistic.
    floor = 2 * mean_pairwise_distance(sample_data("moons", 20000, rng)[:4000]) / n
    draws = [energy_distance(sample_data("moons", n, rng), sample_data("moons", n, rng)) for _ in range(40)]
    assert all(0.1 * floor < d < 6 * floor for d in draws)
    assert np.mean(draws) == pytest.approx(floor, rel=0.25)
    # A cloud moved by a quarter of its spread is far above that floor (14x at 500 points).
    assert energy_distance(x, sample_data("moons", n, rng) + np.float32(0.25)) > 10 * floor


def test_evaluate_reduces_to_the_plain_statistic_and_estimates_its_mean():
    rng = np.random.default_rng(1)
    n = 200
    generated = torch.from_numpy(sample_data("moons", n, rng) * np.float32(1.1))  # too spread out by 10%
    data = sample_data("moons", n, rng)
    # With as many points as the statistic has, `distance` is that statistic, `floor` its expectation for data.
    scores = evaluate(generated, data, n)
    assert scores["distance"] == pytest.approx(energy_distance(generated, data), rel=1e-12)
    assert scores["floor"] == pytest.approx(2 * mean_pairwise_distance(data) / n, rel=1e-5)
    # From 50x more points, it estimates the mean of the n-vs-n statistic over independent draws.
    pooled = evaluate(torch.from_numpy(sample_data("moons", 50 * n, rng) * np.float32(1.1)),
                      sample_data("moons", 50 * n, rng), n)  # fmt: skip
    draws = [energy_distance(sample_data("moons", n, rng) * 1.1, sample_data("moons", n, rng)) for _ in range(300)]
    assert pooled["distance"] == pytest.approx(np.mean(draws), rel=0.1)
    assert pooled["ratio"] > 1.4  # 10% too wide already shows at 200 points a side (1.6)


def test_perfect_samples_score_the_floor():
    rng = np.random.default_rng(2)
    ratios = [
        evaluate(torch.from_numpy(sample_data(name, 5000, rng)), sample_data(name, 10000, rng), 500)["ratio"]
        for name in ("moons", "swiss_roll", "s_curve")
    ]
    assert all(0.8 < ratio < 1.25 for ratio in ratios), ratios


# ----------------------------------------------------------------------------------------------------------------
# Snapshot times: the paper's t (1..T, x_0 = data) against the scheduler's 0-based index t - 1
# ----------------------------------------------------------------------------------------------------------------
def test_snapshot_times_span_data_to_noise():
    assert snapshot_times(100) == [0, 11, 22, 33, 44, 56, 67, 78, 89, 100]
    assert snapshot_times(1000)[0] == 0 and snapshot_times(1000)[-1] == 1000


def test_forward_snapshots_use_alpha_bar_of_the_paper_t():
    scheduler = make_scheduler(100)
    clean = torch.from_numpy(sample_data("moons", 64, np.random.default_rng(0)))
    snapshots = forward_snapshots(clean, scheduler, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(snapshots[0], clean)
    for t in snapshot_times(100)[1:]:
        alpha_bar = torch.prod(1 - scheduler.betas[:t])  # ᾱ_t = Π_{s=1..t} (1 - β_s)
        noise = torch.randn(clean.shape, generator=generator)
        expected = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise
        torch.testing.assert_close(snapshots[t], expected, rtol=1e-5, atol=1e-6)
    assert snapshots[100].std() == pytest.approx(1, abs=0.15)  # ᾱ_T ≈ 0: noise


def test_reverse_snapshot_t_comes_after_T_minus_t_steps():
    torch.manual_seed(0)
    model = NoisePredictor(hidden_size=8, num_layers=1, num_train_timesteps=100).eval()  # untrained will do
    scheduler = make_scheduler(100)
    x_0, snapshots = sample(model, scheduler, 16, torch.Generator().manual_seed(3))
    assert sorted(snapshots) == snapshot_times(100)
    assert torch.equal(snapshots[0], x_0)

    generator = torch.Generator().manual_seed(3)
    latents = torch.randn((16, 2), generator=generator)
    assert torch.equal(snapshots[100], latents)  # x_T: before any step
    for steps_done, index in enumerate(scheduler.timesteps, start=1):
        with torch.no_grad():
            latents = scheduler.step(model(latents, index), index, latents, generator=generator).prev_sample
        if 100 - steps_done in snapshots:
            torch.testing.assert_close(snapshots[100 - steps_done], latents, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Bad arguments: one line, exit code 2, nothing written
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "circles"], r"`dataset`: 'circles' is not supported; choose one of moons, swiss_roll, s_curve"),
        (["--dataset", "moons", "--num_train_timesteps", "50"], r"`num_train_timesteps`: 50 is outside .*\[100, 1000\]"),
        (["--dataset", "moons", "--num_train_timesteps", "1001"], r"`num_train_timesteps`: 1001 is outside"),
        (["--dataset", "moons", "--learning_rate", "-0.1"], r"`learning_rate`: -0.1 must be a positive finite"),
        (["--dataset", "moons", "--learning_rate", "nan"], r"`learning_rate`: nan must be a positive finite"),
        (["--dataset", "moons", "--learning_rate", "fast"], r"argument --learning_rate: invalid float value: 'fast'"),
        (["--dataset", "moons", "--beta_schedule", "cosine"], r"`beta_schedule`: 'cosine' is not supported"),
        (["--dataset", "moons", "--train_steps", "0"], r"`train_steps`: 0 must be a positive integer"),
        (["--dataset", "moons", "--num_generated", "100"], r"`num_generated`: 100 must be at least `num_samples`: 5000"),
        (["--seed", "0"], r"the following arguments are required: --dataset"),
    ],
)
def test_bad_arguments_one_line_exit_2_nothing_written(argv, message, tmp_path, capsys):
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([*argv, "--output_dir", str(output_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("toy2d.py: error: ")
    assert re.search(message, err), err
    assert not output_dir.exists()


def test_output_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--dataset", "moons", "--output_dir", str(target)])
    assert exit_info.value.code == 2
    assert "`output_dir`: " in capsys.readouterr().err and target.read_text() == "not a folder"


def test_config_errors_are_value_errors():
    with pytest.raises(ValueError, match=r"`dataset`: 'circles' is not supported"):
        Toy2DConfig(dataset="circles")
    with pytest.raises(ValueError, match=r"`learning_rate`: inf must be a positive finite number"):
        Toy2DConfig(learning_rate=math.inf)
    with pytest.raises(ValueError, match=r"`num_data`: 10 must be at least `num_samples`: 20"):
        Toy2DConfig(num_samples=20, num_data=10)
    with pytest.raises(ValueError, match=r"`beta_schedule`: 'scaled_linear' is not supported"):
        make_scheduler(100, "scaled_linear")


def test_cli_process_bad_dataset(tmp_path):
    output_dir = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", "circles", "--output_dir", str(output_dir)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "`dataset`: 'circles' is not supported" in result.stderr
    assert not output_dir.exists()
