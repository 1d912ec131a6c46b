"""scripts/bench_recipe.py, the cost table behind docs/recipe.md: a real (tiny-batch) run prints every row with the
chosen models as the 1.00 reference, and bad arguments are one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_recipe.py"


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_prints_the_cost_table_relative_to_the_chosen_models():
    result = bench("--batch", "2", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("UNet,", "VAE,"))]
    assert len(rows) == 8  # 2 UNets and 2 VAEs, fp32 and bf16 each
    by_name = {(" ".join(row[:-5]), row[-5]): [float(x) for x in row[-4:]] for row in rows}
    assert by_name[("UNet, chosen (shapes.yaml)", "fp32")][1] == by_name[("UNet, chosen (shapes.yaml)", "fp32")][3] == 1.0
    assert by_name[("VAE, chosen (shapes.yaml)", "fp32")][1] == 1.0
    assert all(value > 0 for values in by_name.values() for value in values)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threads", "0"], "--threads: 0 must be >= 1"),
        (["--batch", "-1"], "--batch: -1 must be >= 1"),
        (["--config", "no/such.yaml"], "--config: Config file 'no/such.yaml' does not exist."),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    result = bench(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
