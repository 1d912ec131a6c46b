"""scripts/sample.py on a tiny pipeline saved to disk: one real subprocess run, in-process runs of `main` for the
img2img / inpainting paths, and bad arguments (one line on stderr, exit code 2, no traceback)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import make_components

from pipelines import LatentDiffusionPipeline

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sample.py"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny components saved as a pipeline folder, as training writes one."""
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    LatentDiffusionPipeline(**make_components()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, 16:] = 255
    PIL.Image.fromarray(pixels).save(folder / "in.png")
    PIL.Image.fromarray(mask).save(folder / "mask.png")
    return folder / "in.png", folder / "mask.png"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def load_script():
    spec = importlib.util.spec_from_file_location("sample_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text2img_writes_images_grid_and_filmstrip(model_dir, tmp_path):
    out = tmp_path / "samples" / "grid.png"
    result = run_cli(
        model_dir, "--prompt", "a red circle", "--num_images", "3", "--steps", "3", "--scheduler", "ddim",
        "--seed", "5", "--out", out, "--save_intermediates",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for index in range(3):
        assert PIL.Image.open(out.with_name(f"grid_{index}.png")).size == (32, 32)
    assert PIL.Image.open(out).size == (2 * 32 + 2, 2 * 32 + 2)  # 3 images: 2 x 2 grid, 2 px padding
    # One row per image, one column per kept step (every step at 3 steps).
    assert PIL.Image.open(out.with_name("grid_filmstrip.png")).size == (3 * 32 + 2 * 2, 3 * 32 + 2 * 2)


@pytest.mark.parametrize("with_mask", [False, True], ids=["img2img", "inpaint"])
def test_image_and_mask_paths(model_dir, inputs, tmp_path, with_mask):
    image, mask = inputs

    def args(num_images: int, seed: int, out: Path) -> list[str]:
        args = [str(model_dir), "--prompt", "a blue square", "--steps", "4", "--image", str(image)]
        args += ["--strength", "0.5", "--num_images", str(num_images), "--seed", str(seed), "--out", str(out)]
        return args + (["--mask", str(mask), "--scheduler", "dpm"] if with_mask else [])

    load_script().main(args(2, 0, tmp_path / "g.png") + ["--save_intermediates"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "g_0.png", "g_1.png", "g_filmstrip.png"]
    # Image i uses seed + i, so the second image is reproduced alone with --seed 1 (to one uint8 level: a batch of
    # one runs the convolutions with other kernels, which can flip the rounding of a pixel).
    load_script().main(args(1, 1, tmp_path / "alone" / "a.png"))
    paths = (tmp_path / "alone" / "a.png", tmp_path / "g_1.png")
    alone, second = (np.asarray(PIL.Image.open(path)).astype(int) for path in paths)
    assert np.abs(alone - second).max() <= 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["{missing}", "--prompt", "x", "--out", "o.png"], "MODEL: no such folder"),
        (["{model}", "--prompt", "x", "--out", "o.png", "--image", "{image}", "--strength", "1.5"], "--strength: 1.5"),
        (["{model}", "--prompt", "x", "--out", "o.png", "--strength", "0.5"], "--strength needs --image"),
        (["{model}", "--prompt", "x", "--out", "o.png", "--mask", "{mask}"], "--mask needs --image"),
        (["{model}", "--prompt", "x", "--out", "o.png", "--scheduler", "pndm"], "invalid choice: 'pndm'"),
        (["{model}", "--prompt", "x", "--out", "o.png", "--steps", "0"], "--steps: 0 must be >= 1"),
        (["{model}", "--out", "o.png"], "the following arguments are required: --prompt"),
        (["{model}", "--prompt", "x", "--out", "o.png", "--image", "{missing}"], "--image: no such file"),
    ],
    ids=["missing_model", "strength_range", "strength_without_image", "mask_without_image", "unknown_scheduler",
         "steps", "no_prompt", "missing_image"],  # fmt: skip
)
def test_bad_arguments_print_one_line_and_exit_2(model_dir, inputs, tmp_path, args, message):
    """Checked before torch is imported, so each of these costs a fraction of a second."""
    names = {"model": model_dir, "missing": tmp_path / "missing", "image": inputs[0], "mask": inputs[1]}
    result = run_cli(*[arg.format(**names) for arg in args])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_pipeline_argument_errors_exit_2_without_traceback(model_dir, capsys):
    """Errors the pipeline finds (here a height that is not a multiple of the VAE factor) end the same way."""
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([str(model_dir), "--prompt", "x", "--out", "o.png", "--height", "33", "--steps", "1"])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == "sample.py: error: `height`: 33 must be a positive multiple of the VAE scale factor 2."
