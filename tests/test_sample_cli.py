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
import torch
from conftest import TORCH_PROBE, make_components
from diffusers import EulerDiscreteScheduler

from pipelines import DDPMScheduler, LatentDiffusionPipeline

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
        [sys.executable, "-c", TORCH_PROBE, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
        timeout=300,
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
    assert result.stdout.endswith("torch imported\n")  # the probe sees the import when the script gets that far
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


# Each flag against the pipeline called directly with the matching argument: (CLI flags, pipeline kwargs, scheduler).
FLAG_CASES = {
    "defaults": ([], {}, None),
    "negative_prompt": (["--negative_prompt", "a large blue square"], {"negative_prompt": "a large blue square"}, None),
    "guidance_1": (["--guidance_scale", "1"], {"guidance_scale": 1.0}, None),
    "guidance_3": (["--guidance_scale", "3"], {"guidance_scale": 3.0}, None),
    "scheduler_ddpm": (["--scheduler", "ddpm"], {}, DDPMScheduler),
    "scheduler_euler": (["--scheduler", "euler"], {}, EulerDiscreteScheduler),
    "height_width": (["--height", "16", "--width", "24"], {"height": 16, "width": 24}, None),
}


@pytest.fixture(scope="module")
def flag_images(model_dir, tmp_path_factory) -> dict[str, np.ndarray]:
    """The one image (2 steps, seed 3) the CLI writes for each case of FLAG_CASES, run in-process."""
    images = {}
    for case, (flags, _, _) in FLAG_CASES.items():
        out = tmp_path_factory.mktemp(case) / "grid.png"
        load_script().main([str(model_dir), "--prompt", "a red circle", "--num_images", "1", "--steps", "2",
                            "--seed", "3", "--out", str(out), *flags])  # fmt: skip
        images[case] = np.asarray(PIL.Image.open(out.with_name("grid_0.png")))
    return images


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_flags_give_the_pipelines_images(model_dir, flag_images, case):
    """What each flag does is what the pipeline argument does: the same uint8 image, pixel for pixel."""
    _, kwargs, scheduler = FLAG_CASES[case]
    pipe = LatentDiffusionPipeline.from_pretrained(model_dir)
    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    generator = [torch.Generator().manual_seed(3)]
    expected = np.asarray(pipe("a red circle", num_inference_steps=2, generator=generator, **kwargs).images[0])
    np.testing.assert_array_equal(flag_images[case], expected)


def test_flags_change_the_image(flag_images):
    def differ(a: str, b: str) -> float:
        return np.abs(flag_images[a].astype(int) - flag_images[b].astype(int)).mean()

    # Mean |Δ| in uint8 levels, measured on the tiny random model: 3.44, 1.20 and 0.81 (2 steps, so small).
    assert differ("negative_prompt", "defaults") > 1.0
    assert differ("guidance_1", "guidance_3") > 0.3
    assert differ("scheduler_euler", "scheduler_ddpm") > 0.2
    # The model's own scheduler is our DDPMScheduler, so --scheduler ddpm changes nothing.
    np.testing.assert_array_equal(flag_images["scheduler_ddpm"], flag_images["defaults"])
    assert flag_images["height_width"].shape == (16, 24, 3) and flag_images["defaults"].shape == (32, 32, 3)


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
        (["{model}", "--prompt", "x", "--out", "{tmp}/o.png", "--image", "{text}"],
         "--image: cannot read {text} as an image: cannot identify image file"),
        (["{model}", "--prompt", "x", "--out", "{tmp}/o.png", "--image", "{truncated}"],
         "--image: cannot read {truncated} as an image: image file is truncated"),
        (["{model}", "--prompt", "x", "--out", "{tmp}/o.png", "--image", "{image}", "--mask", "{text}"],
         "--mask: cannot read {text} as an image: cannot identify image file"),
        (["{model}", "--prompt", "x", "--out", "{tmp}/o.png", "--image", "{image}", "--mask", "{small_mask}"],
         "--mask: size 16x16 differs from --image's 32x32"),
        (["{model}", "--prompt", "x", "--out", "{tmp}/o.txt"],
         "--out: '{tmp}/o.txt' does not end in an image format PIL can write (.txt); use .png"),
        (["{model}", "--prompt", "x", "--out", "{tmp}/grid"], "does not end in an image format PIL can write (no ext"),
        (["{model}", "--prompt", "x", "--out", "{tmp}/o.xbm"], "(.xbm); use .png"),  # registered, but not for RGB
        (["{model}", "--prompt", "x", "--out", "/proc/sculpt-test/o.png"],
         "--out: cannot create the folder /proc/sculpt-test: "),
        (["{model}", "--prompt", "x", "--out", "{text}/o.png"],
         "--out: cannot create the folder {text}: {text} is a file"),
        (["{model}", "--prompt", "x", "--out", "{tmp}/folder.png"], "--out: {tmp}/folder.png is a folder"),
        (["{model}", "--prompt", "x", "--out", "o.png", "--lora_scale", "0.5"], "--lora_scale needs --lora"),
        (["{model}", "--prompt", "x", "--out", "o.png", "--lora", "./no-lora"], "--lora: no such file or folder"),
    ],
    ids=["missing_model", "strength_range", "strength_without_image", "mask_without_image", "unknown_scheduler",
         "steps", "no_prompt", "missing_image", "image_not_an_image", "truncated_image", "mask_not_an_image",
         "mask_size", "out_txt", "out_no_extension", "out_format_cannot_write_rgb", "out_folder_cannot_be_created",
         "out_parent_is_a_file", "out_is_a_folder", "lora_scale_without_lora", "lora_missing"],  # fmt: skip
)
def test_bad_arguments_print_one_line_and_exit_2(model_dir, inputs, tmp_path, args, message):
    """Checked before torch is imported (so before any model loads or any sampling), each in a fraction of a
    second; nothing is written."""
    (tmp_path / "notimage.png").write_text("not an image\n")
    (tmp_path / "folder.png").mkdir()
    PIL.Image.new("L", (16, 16)).save(tmp_path / "small_mask.png")
    data = inputs[0].read_bytes()  # random pixels: half the file still has a valid header
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    names = {"model": model_dir, "missing": tmp_path / "missing", "image": inputs[0], "mask": inputs[1],
             "tmp": tmp_path, "text": tmp_path / "notimage.png", "small_mask": tmp_path / "small_mask.png",
             "truncated": tmp_path / "truncated.png"}  # fmt: skip
    before = sorted(tmp_path.rglob("*"))
    result = run_cli(*[arg.format(**names) for arg in args])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message.format(**names) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "torch not imported\n"
    assert sorted(tmp_path.rglob("*")) == before


def test_pipeline_argument_errors_exit_2_without_traceback(model_dir, capsys):
    """Errors the pipeline finds (here a height that is not a multiple of the VAE factor) end the same way."""
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([str(model_dir), "--prompt", "x", "--out", "o.png", "--height", "33", "--steps", "1"])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == "sample.py: error: `height`: 33 must be a positive multiple of the VAE scale factor 2."


def test_lora_and_its_scale(model_dir, tmp_path):
    """--lora loads a diffusers-format LoRA (as diffusers' scripts write it) on the model; --lora_scale 0 gives the
    model's own images, and the images with the LoRA are those of the pipeline with it loaded."""
    pytest.importorskip("peft", reason="diffusers' LoRA loader needs peft: pip install -e '.[lora]'")
    from conftest import make_lora_file

    lora = make_lora_file(tmp_path / "lora")
    script = load_script()
    for name, extra in (("base", []), ("lora", ["--lora", str(lora)]), ("off", ["--lora", str(lora), "--lora_scale",
                        "0"]), ("file", ["--lora", str(lora / "pytorch_lora_weights.safetensors")])):  # fmt: skip
        script.main([str(model_dir), "--prompt", "a small red circle on a white background", "--num_images", "1",
                     "--steps", "3", "--guidance_scale", "2", "--out", str(tmp_path / f"{name}.png"), *extra])
    pixels = {n: np.asarray(PIL.Image.open(tmp_path / f"{n}_0.png")) for n in ("base", "lora", "off", "file")}
    assert np.array_equal(pixels["off"], pixels["base"]) and np.array_equal(pixels["file"], pixels["lora"])
    assert not np.array_equal(pixels["lora"], pixels["base"])
    pipe = LatentDiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(lora)
    image = pipe("a small red circle on a white background", num_inference_steps=3, guidance_scale=2.0,
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(image), pixels["lora"])


def test_a_lora_for_another_model_is_one_line_exit_2(model_dir, tmp_path, capsys):
    pytest.importorskip("peft", reason="diffusers' LoRA loader needs peft: pip install -e '.[lora]'")
    from conftest import make_lora_file
    from safetensors.torch import load_file, save_file

    state = load_file(make_lora_file(tmp_path / "lora") / "pytorch_lora_weights.safetensors")
    save_file({k: torch.zeros(v.shape[0], v.shape[1] * 2) if ".down." in k else v for k, v in state.items()},
              tmp_path / "wide.safetensors")  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([str(model_dir), "--prompt", "x", "--out", str(tmp_path / "o.png"), "--steps", "1",
                            "--lora", str(tmp_path / "wide.safetensors")])  # fmt: skip
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sample.py: error: --lora: ") and "the file was made for another model" in last, last
    assert not list(tmp_path.glob("o*.png"))
