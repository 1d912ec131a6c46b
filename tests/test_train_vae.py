"""Stage 1: scripts/train_vae.py trains an AutoencoderKL and stores the measured latent scaling factor; it refuses an
existing run's folder, checkpoints and resumes bit for bit, stops cleanly on SIGTERM and stops on a NaN loss, as the
diffusion stage does."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from conftest import ROOT, TINY, wait_until_frozen
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from training.checkpoint import list_checkpoints
from training.config import load_config
from training.data import load_train_dataset
from training.errors import NonFiniteLossError
from training.train_vae import EMA_FOLDER, main, measure_latents

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def vae_config(out, *overrides: str):
    """configs/tiny.yaml's VAE stage into `out`: 16 images in batches of 4, so 4 steps per epoch, EMA on (with
    warmup), no periodic checkpoints unless `overrides` ask."""
    return load_config(TINY, [f"vae_output_dir={out}", "num_shapes_samples=16", "checkpointing_steps=null", *overrides])


def tensors(path) -> dict[str, torch.Tensor]:
    return load_file(path)


def assert_same_tensors(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        assert torch.equal(a[key], b[key]), f"{where}: {key}"


def test_train_vae_reduces_reconstruction_error_and_stores_scaling_factor(tmp_path):
    config = load_config(TINY, [f"vae_output_dir={tmp_path}", "vae_max_train_steps=200", "use_ema=false"])
    PartialState()
    set_seed(config.seed)
    untrained = AutoencoderKL(**config.vae_config).eval()  # the same initialisation main() starts from
    _, error_before, _ = measure_latents(untrained, load_train_dataset(config), config)

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


def test_refuses_a_vae_output_dir_that_holds_another_run(tmp_path):
    main(vae_config(tmp_path, "vae_max_train_steps=2", "checkpointing_steps=2"))
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert "diffusion_pytorch_model.safetensors" in saved and list_checkpoints(tmp_path)

    with pytest.raises(ValueError, match=r"`vae_output_dir`: '.*' already holds a run \(checkpoint-2, config\.json, "
                                         r"diffusion_pytorch_model\.safetensors\)\. Set `overwrite_output_dir=true` to "
                                         r"replace it, `resume_from_checkpoint=latest` to continue it, or choose "
                                         r"another `vae_output_dir`\."):
        main(vae_config(tmp_path, "vae_max_train_steps=2", "seed=1"))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == saved  # nothing was touched

    main(vae_config(tmp_path, "vae_max_train_steps=2", "seed=1", "overwrite_output_dir=true"))
    assert (tmp_path / "diffusion_pytorch_model.safetensors").read_bytes() != saved["diffusion_pytorch_model.safetensors"]


def test_resume_matches_an_uninterrupted_run_bit_for_bit_without_replaying_batches(tmp_path):
    # 6 steps at 4 per epoch, checkpoints every 3: the one at 3 is mid-epoch and the resumed run crosses an epoch.
    run = ["vae_max_train_steps=6", "checkpointing_steps=3"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    main(vae_config(full, *run))
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")

    from diffusers.models.autoencoders.vae import Encoder

    forwards = []
    count = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: forwards.append(1) if isinstance(module, Encoder) else None
    )
    try:
        main(vae_config(resumed, *run, "resume_from_checkpoint=latest"))
    finally:
        count.remove()
    assert len(forwards) == 3 + 1  # steps 4..6, then measuring the scaling factor: no skipped batch was encoded

    # The final (EMA) VAE and the scaling factor measured with it; raw weights, EMA, optimizer and LR schedule in the
    # last checkpoint; the loss history.
    assert_same_tensors(tensors(full / "diffusion_pytorch_model.safetensors"),
                        tensors(resumed / "diffusion_pytorch_model.safetensors"), "final VAE")
    assert json.loads((full / "config.json").read_text()) == json.loads((resumed / "config.json").read_text())
    for name in ("model.safetensors", f"{EMA_FOLDER}/diffusion_pytorch_model.safetensors"):
        assert_same_tensors(tensors(full / "checkpoint-6" / name), tensors(resumed / "checkpoint-6" / name), name)
    optimizers = [torch.load(d / "checkpoint-6" / "optimizer.bin", weights_only=True) for d in (full, resumed)]
    assert optimizers[0]["param_groups"] == optimizers[1]["param_groups"]
    for state_a, state_b in zip(optimizers[0]["state"].values(), optimizers[1]["state"].values(), strict=True):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    schedules = [torch.load(d / "checkpoint-6" / "scheduler.bin", weights_only=True) for d in (full, resumed)]
    assert schedules[0] == schedules[1]
    history = [json.loads((d / "checkpoint-6" / "trainer_state.json").read_text())["history"] for d in (full, resumed)]
    assert history[0] == history[1] and len(history[0]) == 6
    assert (full / "vae_metrics.json").read_text() == (resumed / "vae_metrics.json").read_text()


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_0(tmp_path):
    out = tmp_path / "vae"
    command = [sys.executable, str(ROOT / "scripts" / "train_vae.py"), "--config", TINY, f"vae_output_dir={out}",
               "num_shapes_samples=16", "vae_max_train_steps=8", "checkpointing_steps=null"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = tmp_path / "log"
    with open(log, "w") as sink:
        # The run freezes itself in the middle of step 3 (SIGSTOP through the hook), so SIGTERM lands at a known step;
        # it is delivered when the run continues.
        process = subprocess.Popen(command, stdout=sink, stderr=sink, text=True,
                                   env={**env, "SCULPT_TEST_KILL_AT": "step:3/SIGSTOP"})  # fmt: skip
        wait_until_frozen(process)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert ("Stopped by signal at step 3; checkpoint saved. Resume with: resume_from_checkpoint=latest (same config "
            "and vae_output_dir)." in log.read_text())
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3"]
    assert not (out / "diffusion_pytorch_model.safetensors").exists()  # stopped, not finished

    done = subprocess.run([*command, "resume_from_checkpoint=latest"], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resumed from {out / 'checkpoint-3'} at step 3" in done.stdout
    assert json.loads((out / "vae_metrics.json").read_text())["steps"] == 8


@pytest.mark.parametrize("policy, stopped_at, why, kept", [
    ("stop", 2, "non_finite_loss=stop", "checkpoint-1"),  # the first NaN stops
    ("skip", 3, "2 in a row, max_consecutive_non_finite=2", "checkpoint-2"),  # step 2 skipped, step 3 stops
])  # fmt: skip
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, caplog, policy, stopped_at, why, kept
):
    """A learning rate of 1e30 makes Adam's first update ±1e30 per weight, so the loss of step 2 is NaN (GroupNorm's
    variance overflows) and so is every later one: a diverged run, without touching the code or the data."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    config = vae_config(tmp_path, "vae_max_train_steps=6", "checkpointing_steps=1", "vae_learning_rate=1e30",
                        f"non_finite_loss={policy}", "max_consecutive_non_finite=2")  # fmt: skip
    with caplog.at_level("WARNING"), pytest.raises(NonFiniteLossError) as error:
        main(config)
    assert str(error.value).startswith(f"Non-finite loss or gradient at step {stopped_at} (loss=nan")
    assert str(error.value).endswith(
        f"the update was not applied. Training stopped ({why}); the last good checkpoint, {kept}, is untouched. Lower "
        f"vae_learning_rate, check the data of that step, or set non_finite_loss=skip."
    )
    if policy == "skip":
        assert "Non-finite loss or gradient at step 2 (loss=nan" in caplog.text and "Skipping it (1 in a row)" in caplog.text
    assert [p.name for p in list_checkpoints(tmp_path)] == ([kept] if policy == "stop" else ["checkpoint-1", kept])
    assert not (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    # The skipped update never reached the weights: checkpoint-2 (after the skipped step 2) holds checkpoint-1's.
    if policy == "skip":
        assert_same_tensors(tensors(tmp_path / "checkpoint-1" / "model.safetensors"),
                            tensors(tmp_path / "checkpoint-2" / "model.safetensors"), "skipped step")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back on the way out


# ---- vae_output_dir: overwrite, and resuming only the run a checkpoint belongs to -----------------------------------


def test_overwrite_removes_the_old_vae_runs_checkpoints_so_latest_resumes_only_the_new_run(tmp_path, capsys):
    """Run A, then run B with overwrite_output_dir, then `latest`: before, A's checkpoint-4 outlived B's rotation (it
    was "newest") and `latest` resumed A, whatever the settings."""
    a = ["vae_max_train_steps=4", "checkpointing_steps=2"]
    b = ["vae_max_train_steps=2", "checkpointing_steps=1", "checkpoints_total_limit=2", "vae_learning_rate=5e-4"]
    main(vae_config(tmp_path, *a))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    main(vae_config(tmp_path, *b, "overwrite_output_dir=true"))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    b_weights = tensors(tmp_path / "diffusion_pytorch_model.safetensors")
    capsys.readouterr()

    # B's checkpoint resumes with B's settings, also when keys only the diffusion stage reads differ.
    main(vae_config(tmp_path, *b, "resume_from_checkpoint=latest", "learning_rate=0.5", "cfg_dropout=0.5"))
    assert f"Resumed from {tmp_path / 'checkpoint-2'} at step 2" in capsys.readouterr().out
    assert_same_tensors(b_weights, tensors(tmp_path / "diffusion_pytorch_model.safetensors"), "B saved again")
    # A's settings cannot continue it: the key that differs is named.
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint`: .*checkpoint-2' was written by a run with other "
                                         r"settings: vae_learning_rate: 0\.0005 there, 0\.001 now\. Resume with the "
                                         r"settings it was written with, or start a new run \(another vae_output_dir"):
        main(vae_config(tmp_path, *a, "resume_from_checkpoint=latest"))


def test_vae_checkpoints_record_the_settings_of_the_vae_stage(tmp_path):
    """The VAE stage's own resumable keys: its batch size, learning rate, KL weight and vae_config decide what it
    trains (the diffusion stage may change them); the diffusion-only keys do not."""
    from training import checkpoint as ckpt
    from training.config import RESUMABLE_CHANGES, VAE_RESUMABLE_CHANGES, TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert VAE_RESUMABLE_CHANGES <= fields and RESUMABLE_CHANGES <= fields
    config = vae_config(tmp_path)
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    settings = ckpt.fingerprint(config, 1, VAE_RESUMABLE_CHANGES)
    (checkpoint / ckpt.STATE_FILE).write_text(json.dumps({"global_step": 3, "config": settings}))
    # The diffusion stage records the other way round: the VAE stage's keys may change, its own may not.
    diffusion_settings = ckpt.fingerprint(config, 1)
    for key in ("kl_weight", "vae_train_batch_size", "vae_learning_rate"):
        assert key in settings and key not in diffusion_settings
    for key in ("unet_config", "learning_rate", "train_batch_size", "cfg_dropout"):
        assert key in diffusion_settings and key not in settings

    def check(*overrides: str) -> None:
        ckpt.check_resumable(checkpoint, vae_config(tmp_path, *overrides), 1, resumable=VAE_RESUMABLE_CHANGES,
                             ema_folder=EMA_FOLDER, output_key="vae_output_dir")  # fmt: skip

    for override, named in [("kl_weight=0.5", r"kl_weight: 1e-06 there, 0\.5 now"),
                            ("vae_train_batch_size=2", r"vae_train_batch_size: 4 there, 2 now"),
                            ("vae_learning_rate=0.1", r"vae_learning_rate: 0\.001 there, 0\.1 now"),
                            ("vae_config.layers_per_block=2", r"vae_config\.layers_per_block: 1 there, 2 now"),
                            ("seed=3", r"seed: 0 there, 3 now")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"other settings: {named}\. .*another vae_output_dir"):
            check(override)
    check("vae_max_train_steps=99", "checkpointing_steps=7", "learning_rate=0.5", "max_train_steps=3",
          "unet_config.layers_per_block=3", "cfg_dropout=0.5", "train_batch_size=2", "tokenizer_vocab_size=700")

    # A pickled EMA in the VAE stage's own EMA folder is refused like the diffusion stage's.
    (checkpoint / EMA_FOLDER).mkdir()
    (checkpoint / EMA_FOLDER / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=rf"holds model weights only as pickle \({EMA_FOLDER}/diffusion_pytorch_model"):
        check()
    check("allow_pickle=true")
