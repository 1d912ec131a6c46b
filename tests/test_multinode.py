"""More than one machine through accelerate's launcher (issue 14 §3): two launches of one process each, joined over
loopback as 2 "machines" (gloo on CPU), train bit for bit what one machine with 2 processes trains (slow: three
2-process launches); and the faults: a machine that never joins ends the launch at the rendezvous timeout, a rank
killed mid-epoch on one machine stops the other and leaves the last checkpoint intact to resume from (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch
from safetensors.torch import load_file

from training.checkpoint import STATE_FILE, list_checkpoints, verify

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "SCULPT_TEST_KILL_AT": "", "PYTHONPATH": str(ROOT)}  # fmt: skip
RUN = ("num_shapes_samples=16", "max_train_steps=4", "train_batch_size=2", "validation_prompts=[]",
       "validation_steps=null", "checkpointing_steps=2", "train_text_encoder=false", "random_flip=false")  # fmt: skip



def train_command(launch: list[str], out: Path, cache: Path) -> list[str]:
    return [*launch, str(ROOT / "scripts" / "train.py"), "--config", TINY, f"output_dir={out}", f"cache_dir={cache}",
            *RUN]  # fmt: skip


def machine(rank: int, port: int, *launcher: str) -> list[str]:
    """The launch on "machine" `rank` of 2, one process each, the main one on loopback."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--machine_rank",
            str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no", *launcher]  # fmt: skip


def launch_machines(out: Path, cache: Path, port: int, env: dict, *overrides: str, timeout: float = 300):
    """Both machines' launches, started together; [(returncode, stderr)] once both have ended."""
    launches = [subprocess.Popen([*train_command(machine(rank, port), out, cache), *overrides],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for rank in (0, 1)]  # fmt: skip
    errors = [p.communicate(timeout=timeout)[1] for p in launches]
    return [(p.returncode, error) for p, error in zip(launches, errors)]


def test_a_machine_that_never_joins_ends_the_launch_at_the_rendezvous_timeout(tmp_path):
    # Machine 0 alone: accelerate's launcher (torch's static rendezvous) waits `--rdzv_conf timeout=S` seconds for
    # the others (600 by default), then ends naming how many joined; the trainer never starts, nothing is written.
    out = tmp_path / "run"
    start = time.monotonic()
    done = subprocess.run(train_command(machine(0, 29781, "--rdzv_conf", "timeout=8"), out, tmp_path / "hf"),
                          capture_output=True, text=True, timeout=120, env=ENV)  # fmt: skip
    assert done.returncode != 0 and time.monotonic() - start < 60
    assert "Timed out after" in done.stderr and "waiting for clients. 1/2 clients joined." in done.stderr
    assert not out.exists()


@pytest.mark.slow  # ~50 s: two 2-machine launches
def test_a_rank_killed_mid_epoch_on_one_machine_stops_the_other_and_the_last_checkpoint_resumes(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "hf"
    start = time.monotonic()
    # Machine 1's only process (rank 1) SIGKILLs itself in the middle of step 3; checkpoint-2 was written before.
    ended = launch_machines(out, cache, 29782, {**ENV, "SCULPT_TEST_KILL_AT": "step:3@1"}, timeout=240)
    assert all(code != 0 for code, _ in ended) and time.monotonic() - start < 180, [code for code, _ in ended]
    assert "exitcode  : -9" in ended[1][1] and "Signal 9 (SIGKILL)" in ended[1][1]  # torchrun's summary, machine 1
    assert "scripts/train.py FAILED" in ended[0][1]  # machine 0's rank saw its peer go and stopped too
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"] and verify(out / "checkpoint-2") is None
    assert not (out / "unet").exists()  # no final pipeline from a run that did not finish
    # Both machines again, resuming from the intact checkpoint, finish the run.
    resumed = launch_machines(out, cache, 29783, ENV, "resume_from_checkpoint=latest")
    assert all(code == 0 for code, _ in resumed), resumed[0][1][-3000:]
    assert json.loads((out / "checkpoint-4" / STATE_FILE).read_text())["global_step"] == 4
    assert len(json.loads((out / "loss_history.json").read_text())) == 4


@pytest.mark.slow
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
