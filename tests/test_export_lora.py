"""scripts/export_lora.py and `training.lora.convert_lora_file`: diffusers' LoRA layout to kohya's and back, the
strength (α) kept, the images the same in sculpt and in StableDiffusionPipeline; bad files one line, exit 2, nothing
written."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TORCH_PROBE, make_components, make_lora_file

pytest.importorskip("peft", reason="diffusers' LoRA loader needs peft: pip install -e '.[lora]'")
from diffusers import StableDiffusionPipeline  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from pipelines import LatentDiffusionPipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "export_lora.py"
PROMPT = "a small red circle on a white background"


def load_script():
    spec = importlib.util.spec_from_file_location("export_lora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images_with(lora: Path, weight_name: str | None = None, stable_diffusion: bool = False) -> np.ndarray:
    parts = make_components()
    pipe = (StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            if stable_diffusion else LatentDiffusionPipeline(**parts))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(lora, **({"weight_name": weight_name} if weight_name else {}))
    return pipe(PROMPT, num_inference_steps=3, guidance_scale=2.0, output_type="np",
                generator=torch.Generator().manual_seed(0)).images  # fmt: skip


def test_kohya_and_back_keep_the_images(tmp_path):
    lora = make_lora_file(tmp_path / "lora", alpha=8, text_encoder=True)  # α ≠ r: the strength must travel
    expected = images_with(lora)
    script = load_script()
    assert script.main([str(lora), "--format", "kohya", "--out", str(tmp_path / "k.safetensors")]) == 0
    kohya = load_file(tmp_path / "k.safetensors")
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_")) for k in kohya)
    assert {v.item() for k, v in kohya.items() if k.startswith("lora_unet_") and k.endswith(".alpha")} == {8.0}
    for sd in (False, True):
        np.testing.assert_allclose(images_with(tmp_path, "k.safetensors", sd), expected, atol=1e-5)
    # ... and back to diffusers' layout, with the LoraConfig metadata α = 8 again.
    assert script.main([str(tmp_path / "k.safetensors"), "--format", "diffusers", "--out", str(tmp_path / "back"),
                        "--base", str(save_base(tmp_path))]) == 0  # fmt: skip
    with safe_open(str(tmp_path / "back" / "pytorch_lora_weights.safetensors"), "pt") as handle:
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert metadata["unet.lora_alpha"] == 8.0 and metadata["unet.r"] == 4
    np.testing.assert_allclose(images_with(tmp_path / "back"), expected, atol=1e-5)


def save_base(tmp_path: Path) -> Path:
    if not (tmp_path / "base").exists():
        LatentDiffusionPipeline(**make_components()).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_bad_files_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    lora = make_lora_file(tmp_path / "lora")
    script = load_script()
    kohya = tmp_path / "k.safetensors"
    script.main([str(lora), "--format", "kohya", "--out", str(kohya)])
    cases = {
        "unknown": ({**load_file(kohya), "lora_unet_whatever.weight": torch.zeros(1)}, "diffusers",
                    r"not a LoRA file diffusers can read \(The following keys have not been correctly renamed: "
                    r"lora_unet_whatever\.weight\)"),
        "already": (load_file(kohya), "kohya", r"is already in kohya's layout"),
        "elsewhere": ({k.replace("mid_block", "down_blocks_5"): v for k, v in load_file(kohya).items()}, "diffusers",
                      r"has LoRA weights for 8 of its 32 unet layers that this unet .* does not have"),
    }
    for name, (state, fmt, match) in cases.items():
        save_file(state, tmp_path / f"{name}.safetensors")
        out = tmp_path / f"out-{name}" if fmt == "diffusers" else tmp_path / f"out-{name}.safetensors"
        with pytest.raises(SystemExit) as exit_info:
            script.main([str(tmp_path / f"{name}.safetensors"), "--format", fmt, "--out", str(out),
                         "--base", str(save_base(tmp_path))])  # fmt: skip
        err = capsys.readouterr().err  # after --base's loading progress bars: one line
        line = err.strip().splitlines()[-1]
        assert exit_info.value.code == 2 and err.count("error:") == 1 and "Traceback" not in err
        assert line.startswith("export_lora.py: error: SOURCE: ") and re.search(match, line), (name, line)
        assert not out.exists(), name


def test_bad_arguments_fail_before_torch_is_imported(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"")
    for args, message in ((["missing.safetensors", "--format", "kohya", "--out", "o.safetensors"],
                           "SOURCE: no such file or folder: missing.safetensors"),
                          (["x.safetensors", "--format", "kohya", "--out", "o.bin"], "--out: 'o.bin' must end in "
                           ".safetensors"),
                          (["x.safetensors", "--format", "onnx", "--out", "o"], "argument --format: invalid choice")):
        result = subprocess.run([sys.executable, "-c", TORCH_PROBE, str(SCRIPT), *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stdout.strip() == "torch not imported"
