"""Stage 1: scripts/train_vae.py trains an AutoencoderKL and stores the measured latent scaling factor."""

import json

import datasets
import numpy as np
import pytest
import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from diffusers import AutoencoderKL

from training.config import load_config
from training.data import load_train_dataset
from training.train_vae import _measure, main


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def test_train_vae_reduces_reconstruction_error_and_stores_scaling_factor(tmp_path):
    config = load_config("configs/tiny.yaml", [f"vae_output_dir={tmp_path}", "vae_max_train_steps=200", "use_ema=false"])
    PartialState()
    set_seed(config.seed)
    untrained = AutoencoderKL(**config.vae_config).eval()  # the same initialisation main() starts from
    _, error_before, _ = _measure(untrained, load_train_dataset(config), config)

    main(config)
    metrics = json.loads((tmp_path / "vae_metrics.json").read_text())
    assert metrics["reconstruction_l1"] < 0.8 * error_before, (error_before, metrics)

    vae = AutoencoderKL.from_pretrained(tmp_path)
    assert vae.config.scaling_factor == pytest.approx(metrics["scaling_factor"])
    assert vae.config.scaling_factor != 0.18215  # measured, not SD's constant
    # With the stored factor, latents of the data have unit standard deviation (LDM Sec. 4.3.2).
    rows = load_train_dataset(config).cast_column("image", datasets.Image()).select(range(32))
    pixels = torch.stack([torch.from_numpy(np.array(r["image"].convert("RGB"))).permute(2, 0, 1) for r in rows])
    pixels = pixels.float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    assert (z * vae.config.scaling_factor).std().item() == pytest.approx(1.0, abs=0.15)
    for name in ("loss.png", "reconstructions.png", "train_config.yaml"):
        assert (tmp_path / name).stat().st_size > 0
