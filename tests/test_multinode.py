"""More than one machine through accelerate's launcher (issue 14 §3): two launches of one process each, joined over
loopback as 2 "machines" (gloo on CPU), train bit for bit what one machine with 2 processes trains. Slow: three
2-process launches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "SCULPT_TEST_KILL_AT": "", "PYTHONPATH": str(ROOT)}  # fmt: skip
RUN = ("num_shapes_samples=16", "max_train_steps=4", "train_batch_size=2", "validation_prompts=[]",
       "validation_steps=null", "checkpointing_steps=2", "train_text_encoder=false", "random_flip=false")  # fmt: skip

pytestmark = pytest.mark.slow


def train_command(launch: list[str], out: Path, cache: Path) -> list[str]:
    return [*launch, str(ROOT / "scripts" / "train.py"), "--config", TINY, f"output_dir={out}", f"cache_dir={cache}",
            *RUN]  # fmt: skip


def machine(rank: int, port: int) -> list[str]:
    """The launch on "machine" `rank` of 2, one process each, the main one on loopback."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--machine_rank",
            str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


def test_two_machines_train_what_one_machine_with_two_processes_does(tmp_path):
    cache = tmp_path / "hf"
    one = tmp_path / "one-machine"
    done = subprocess.run(train_command(accelerate_launch(2, 29771), one, cache), capture_output=True, text=True,
                          timeout=600, env=ENV)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    two = tmp_path / "two-machines"  # a shared file system, as on a cluster
    launches = [subprocess.Popen(train_command(machine(rank, 29772), two, cache), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=ENV) for rank in (0, 1)]  # fmt: skip
    results = [p.communicate(timeout=600) for p in launches]
    for process, (_, stderr) in zip(launches, results):
        assert process.returncode == 0, stderr[-4000:]
    assert (two / "loss_history.json").read_text() == (one / "loss_history.json").read_text()
    assert len(json.loads((two / "loss_history.json").read_text())) == 4
    for name in ("unet/diffusion_pytorch_model.safetensors", "checkpoint-4/unet_ema/diffusion_pytorch_model.safetensors"):
        a, b = load_file(one / name), load_file(two / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
