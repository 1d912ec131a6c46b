"""training/sharded.py: FSDP2 through accelerate (`configs/accelerate/fsdp.yaml`) on 2 CPU processes with gloo
(torch 2.13's `fully_shard` runs on CPU; accelerate 1.15 sets FSDP only for GPUs, which sharded.enable_fsdp_on_cpu
makes up for). The run trains as DDP does, its checkpoints (EMA gathered unsharded) resume to the uninterrupted
run's weights, the saved pipeline is the normal unsharded one, and what FSDP cannot shard is refused. Every test
launches 2 processes (30-60 s each on a loaded 2-core machine): all but the first refusal are `slow`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
FSDP = str(ROOT / "configs" / "accelerate" / "fsdp.yaml")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "SCULPT_TEST_KILL_AT": "", "PYTHONPATH": str(ROOT)}  # fmt: skip
# 16 shapes, 2 per process: 4 steps are one epoch. FSDP wraps the UNet's blocks only, so the text encoder is frozen.
# EMA on (tiny.yaml), so the sharded EMA is what gets saved.
RUN = ("num_shapes_samples=16", "max_train_steps=4", "train_batch_size=2", "validation_prompts=[]",
       "validation_steps=null", "checkpointing_steps=2", "train_text_encoder=false", "random_flip=false")  # fmt: skip



def fsdp_launch(port: int) -> list[str]:
    """`accelerate launch` with configs/accelerate/fsdp.yaml (2 processes; on CPU they use gloo)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", FSDP, "--main_process_port", str(port)]


def train(launch: list[str], out: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [*launch, str(ROOT / "scripts" / "train.py"), "--config", TINY, f"output_dir={out}",
               f"cache_dir={cache}", *RUN, *overrides]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)


def losses(out: Path) -> list[float]:
    return [h["loss"] for h in json.loads((out / "loss_history.json").read_text())]


def unet(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    """One FSDP run of RUN, checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("fsdp")
    done = train(fsdp_launch(29731), root / "run", root / "hf")
    assert done.returncode == 0, done.stderr[-4000:]
    return root / "run"


@pytest.mark.slow
def test_fsdp_shards_the_unet_and_trains_as_ddp(fsdp_run, tmp_path):
    # accelerate's FSDP path ran: its checkpoint holds one full state dict of the wrapped UNet (FULL_STATE_DICT).
    assert (fsdp_run / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    assert not list((fsdp_run / "checkpoint-2").glob("model*.safetensors"))  # what DDP's save_state writes
    ddp = tmp_path / "ddp"
    done = train(accelerate_launch(2, 29732), ddp, fsdp_run.parent / "hf")
    assert done.returncode == 0, done.stderr[-4000:]
    assert (ddp / "checkpoint-2" / "model.safetensors").is_file()
    # The same batches, ε and t on each rank; FSDP averages gradients by reduce-scatter, DDP by all-reduce: the
    # same sums in another order, so float rounding only. Measured: losses 1.2e-7 apart, weights 3.4e-6 (AdamW's
    # normalised steps of lr 1e-3 carry the rounding into the weights); the bounds leave ~10x room.
    a, b = losses(fsdp_run), losses(ddp)
    assert len(a) == 4 and max(abs(x - y) for x, y in zip(a, b)) < 1e-6, (a, b)
    assert a[-1] < 0.8 * a[0]
    wa, wb = unet(fsdp_run / "unet"), unet(ddp / "unet")  # the EMA of the UNet, as saved
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 3e-5
    ea, eb = unet(fsdp_run / "checkpoint-4" / "unet_ema"), unet(ddp / "checkpoint-4" / "unet_ema")
    assert ea.keys() == eb.keys() and max((ea[k] - eb[k]).abs().max().item() for k in ea) < 3e-5


@pytest.mark.slow
def test_fsdp_checkpoints_hold_full_weights_and_resume_to_the_same_run(fsdp_run, tmp_path):
    checkpoint = fsdp_run / "checkpoint-2"
    saved = torch.load(checkpoint / "pytorch_model_fsdp.bin", map_location="cpu", weights_only=True)
    ema = unet(checkpoint / "unet_ema")  # gathered from the shards: every tensor at its full shape
    final = unet(fsdp_run / "unet")
    assert ema.keys() == final.keys() == saved.keys()
    assert all(ema[k].shape == final[k].shape == saved[k].shape for k in ema)
    assert any(not torch.equal(ema[k], saved[k]) for k in ema)  # the average, not a copy of the weights
    # Resumed from step 2 in another folder: the uninterrupted run's losses and weights.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    done = train(fsdp_launch(29733), resumed, fsdp_run.parent / "hf", "resume_from_checkpoint=latest")
    assert done.returncode == 0, done.stderr[-4000:]
    assert losses(resumed) == losses(fsdp_run)
    again = unet(resumed / "unet")
    assert all(torch.equal(again[k], final[k]) for k in final)
    assert all(torch.equal(a, b) for a, b in zip(unet(resumed / "checkpoint-4" / "unet_ema").values(),
                                                  unet(fsdp_run / "checkpoint-4" / "unet_ema").values()))  # fmt: skip


@pytest.mark.slow
def test_the_fsdp_pipeline_loads_unsharded(fsdp_run):
    from diffusers import UNet2DConditionModel

    from pipelines import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(fsdp_run)
    assert type(pipe.unet) is UNet2DConditionModel  # not FSDP's FSDPUNet2DConditionModel
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a small red circle on a white background", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and 0 < image.std() and image.min() >= 0 and image.max() <= 1


def test_fsdp_refuses_a_trained_text_encoder(tmp_path):
    done = train(fsdp_launch(29734), tmp_path / "run", tmp_path / "hf", "train_text_encoder=true")
    # Each process says it in one line ("error: ...", its exit status 2); torchrun reports the failed children (1).
    assert done.returncode != 0
    assert "error: `train_text_encoder`: true under FSDP" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoint-2").exists()


@pytest.mark.slow
def test_fsdp_refuses_the_vae_stage(tmp_path):
    command = [*fsdp_launch(29735), str(ROOT / "scripts" / "train_vae.py"), "--config", TINY,
               f"vae_output_dir={tmp_path / 'vae'}", f"cache_dir={tmp_path / 'hf'}", "vae_max_train_steps=2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode != 0
    assert "run scripts/train_vae.py with DDP (--multi_gpu) instead" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "vae").exists()


@pytest.mark.slow
def test_fsdp_refuses_a_compiled_step(tmp_path):
    done = train(fsdp_launch(29736), tmp_path / "run", tmp_path / "hf", "dynamo_backend=inductor")
    assert done.returncode != 0
    assert "error: `dynamo_backend`: 'inductor' compiles the UNet's forward for one process or DDP; this launch is " \
           "FSDP. Use dynamo_backend=no with it." in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run").exists()
