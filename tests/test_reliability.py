"""Reliability (issue 6): a run survives kills, bad numbers and bad input, and loses nothing.

configs/tiny.yaml trained for real, mostly as subprocesses so that they can be killed: SIGKILL at chosen phases (the
SCULPT_TEST_KILL_AT hook in training/checkpoint.py) or at random moments (slow), SIGINT/SIGTERM from outside, a full
disk (a small tmpfs in a user namespace; an injected ENOSPC where that is not allowed), NaNs from one sample, bad
data, and two-process runs in which one rank dies or hangs. Every resumed run is compared bit for bit with one
uninterrupted run of the same config. docs/reliability.md lists the guarantees and the numbers measured here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from conftest import accelerate_launch, tiny, wait_until_frozen
from PIL import Image
from safetensors.torch import load_file

from training.builtin.shapes import make_shapes_sample
from training.checkpoint import STATE_FILE, list_checkpoints, resolve_resume, verify
from training.cli import run as run_cli
from training.config import load_config
from training.data import EpochSampler
from training.errors import CheckpointWriteError, NonFiniteLossError
from training.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
# 32 images in batches of 4 = 8 steps per epoch, so 12 steps cross an epoch boundary; checkpoints at 4, 8 and 12
# (only the newest kept, so rotation is exercised), validation images at 6 and 12.
RUN = ["num_shapes_samples=32", "max_train_steps=12", "checkpointing_steps=4", "checkpoints_total_limit=1",
       "validation_steps=6", "num_inference_steps=2"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "SCULPT_TEST_KILL_AT": ""}

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def command(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", TINY, f"output_dir={out}", *RUN, *overrides]


def train(out: Path, *overrides: str, kill_at: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(out, *overrides), capture_output=True, text=True, timeout=timeout,
                          env={**ENV, "SCULPT_TEST_KILL_AT": kill_at})


def names(paths) -> list[str]:
    return [p.name for p in paths]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    result = train(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def assert_equal_nested(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_nested(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_run(expected: Path, actual: Path, last: int = 12) -> None:
    """Raw and EMA weights, optimizer and LR-schedule state, loss curve and images: bit for bit."""
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 f"checkpoint-{last}/model.safetensors", f"checkpoint-{last}/model_1.safetensors",
                 f"checkpoint-{last}/unet_ema/diffusion_pytorch_model.safetensors"):
        assert_equal_nested(load_file(expected / name), load_file(actual / name), name)
    for name in ("optimizer.bin", "scheduler.bin"):
        a, b = (torch.load(run / f"checkpoint-{last}" / name, weights_only=True) for run in (expected, actual))
        assert_equal_nested(a, b, name)
    assert (expected / "loss_history.json").read_text() == (actual / "loss_history.json").read_text()
    for name in (f"validation/step-{last:06d}.png", "samples.png"):
        assert (expected / name).read_bytes() == (actual / name).read_bytes(), name


# ---- 1. kill and resume, exactly -------------------------------------------------------------------------------------


def test_sigkill_mid_step_validation_and_checkpoint_then_latest_matches_an_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "run"
    latest = "resume_from_checkpoint=latest"
    # 1. Mid-step 2, before any checkpoint: `latest` finds none and starts again from scratch in the same folder.
    killed = train(out, latest, kill_at="step:2")
    assert killed.returncode == -signal.SIGKILL and list_checkpoints(out) == []
    # 2. Mid-validation at step 6, after checkpoint-4.
    killed = train(out, latest, kill_at="validation:6")
    assert killed.returncode == -signal.SIGKILL and names(list_checkpoints(out)) == ["checkpoint-4"]
    # 3. Mid-checkpoint at step 8: models and optimizer are in checkpoint-8.tmp, trainer_state.json is not. `latest`
    #    ignores it, and checkpoints_total_limit=1 has not removed checkpoint-4, the only complete one.
    killed = train(out, latest, kill_at="checkpoint:8")
    assert killed.returncode == -signal.SIGKILL
    partial = out / "checkpoint-8.tmp"
    assert (partial / "optimizer.bin").is_file() and not (partial / STATE_FILE).exists()
    assert names(list_checkpoints(out)) == ["checkpoint-4"] and resolve_resume("latest", out) == out / "checkpoint-4"
    # 4. To the end.
    done = train(out, latest)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resumed from {out / 'checkpoint-4'} at step 4" in done.stdout
    assert names(list_checkpoints(out)) == ["checkpoint-12"] and not list(out.glob("*.tmp"))
    assert_same_run(reference, out)


# ---- 4. graceful stop ------------------------------------------------------------------------------------------------


def test_sigint_and_sigterm_finish_the_step_checkpoint_and_exit_0_then_resume_matches(tmp_path, reference):
    out = tmp_path / "run"
    for sig, step in ((signal.SIGINT, 5), (signal.SIGTERM, 9)):
        # The run freezes itself in the middle of `step` (SIGSTOP through the hook), so the signal lands at a known
        # step; it is delivered when the run continues.
        log = tmp_path / f"{sig.name}.log"
        with open(log, "w") as sink:
            process = subprocess.Popen(command(out, "resume_from_checkpoint=latest"), stdout=sink, stderr=sink,
                                       text=True, env={**ENV, "SCULPT_TEST_KILL_AT": f"step:{step}/SIGSTOP"})
            wait_until_frozen(process)
            process.send_signal(sig)
            process.send_signal(signal.SIGCONT)
            assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
        assert (f"Stopped by signal at step {step}; checkpoint saved. Resume with: resume_from_checkpoint=latest "
                "(same config and output_dir)." in log.read_text())
        assert names(list_checkpoints(out)) == [f"checkpoint-{step}"] and not (out / "model_index.json").exists()
    done = train(out, "resume_from_checkpoint=latest")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(reference, out)


@pytest.mark.parametrize("ending", ["returns", "non_finite_loss", "checkpoint_write"])
def test_signal_handlers_are_put_back_however_main_ends(tmp_path, monkeypatch, ending):
    """`main` installs SIGINT/SIGTERM handlers for the graceful stop. However it ends, the previous ones come back and
    the first Ctrl-C interrupts the calling process again: a NonFiniteLossError or CheckpointWriteError used to leave
    them installed, so that Ctrl-C only set the stop flag of a run that was over."""
    # A shell starts background jobs with SIGINT ignored (`pytest ... &`); give this test the interactive default.
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _check_handlers_come_back(tmp_path, monkeypatch, ending)
    finally:
        signal.signal(signal.SIGINT, original)


def _check_handlers_come_back(tmp_path, monkeypatch, ending):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert before[0] is signal.default_int_handler  # what turns SIGINT into KeyboardInterrupt below
    poisoned = [epoch_order(8, 0)[4]] if ending == "non_finite_loss" else []  # position 4 is the first of step 2
    config = nan_config(tmp_path / "run", saved_dataset(tmp_path, poisoned), "max_train_steps=3",
                        "checkpointing_steps=2", "non_finite_loss=stop")
    if ending == "checkpoint_write":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):  # a full disk while checkpoint-2's optimizer state is written
            if "checkpoint-2.tmp" in str(f):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save)
    expected = {
        "returns": contextlib.nullcontext(),
        "non_finite_loss": pytest.raises(NonFiniteLossError, match=r"at step 2 "),
        "checkpoint_write": pytest.raises(CheckpointWriteError, match=r"Could not write checkpoint-2 "),
    }[ending]
    with magenta_images_give_nan(), expected:
        main(config)
    assert (ending == "returns") == (tmp_path / "run" / "model_index.json").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)  # interrupted at once; a handler left behind would swallow the signal and let this run out


# ---- 8. a full disk --------------------------------------------------------------------------------------------------


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    mount = f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(probe))}"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True)
    return result.returncode == 0


def test_full_disk_during_a_checkpoint_keeps_the_previous_one_and_stops_clearly(tmp_path, reference):
    """A real full disk: the run's output_dir is a tmpfs with room for one checkpoint, not two."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs in a user namespace here; test_enospc_in_a_checkpoint_write covers the path")
    checkpoint_bytes = sum(p.stat().st_size for p in (reference / "checkpoint-12").rglob("*") if p.is_file())
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    out = disk / "run"
    # The tmpfs lives as long as the namespace: run inside it, then copy what is left out to look at.
    script = (f"mount -t tmpfs -o size={int(1.5 * checkpoint_bytes) // 1024 + 256}k tmpfs {shlex.quote(str(disk))} "
              f"|| exit 99; {shlex.join(command(out))}; rc=$?; cp -a {shlex.quote(str(disk))} "
              f"{shlex.quote(str(saved))}; exit $rc")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=ENV,
                            timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert re.match(rf"error: Could not write checkpoint-8 in {out} \(\d+\.\d MiB free on its disk, a checkpoint "
                    rf"takes \d+\.\d MiB\): .*\. Training stopped at step 8; checkpoint-4 is intact\. Free some space "
                    rf"and resume with resume_from_checkpoint=latest\.$", message), message
    assert "Traceback" not in result.stderr
    run = saved / "run"
    assert names(list_checkpoints(run)) == ["checkpoint-4"] and verify(run / "checkpoint-4") is None
    assert not list(run.glob("checkpoint-8*"))  # the partial write was removed
    # With room again, `latest` carries on to the same result as the uninterrupted run.
    done = train(run, "resume_from_checkpoint=latest")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(reference, run)


def test_enospc_in_a_checkpoint_write_keeps_the_previous_one_and_stops_clearly(tmp_path, monkeypatch):
    """The same path without a small disk: torch.save (inside accelerate's save_state) writes part of
    checkpoint-4's optimizer.bin, then fails as a full disk does."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith(os.path.join("checkpoint-4.tmp", "optimizer.bin")):
            Path(f).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    config = tiny(tmp_path, "max_train_steps=6", "checkpointing_steps=2", "checkpoints_total_limit=1",
                  "validation_prompts=[]")
    with pytest.raises(CheckpointWriteError, match=r"Could not write checkpoint-4 in .* \(.* MiB free on its disk, a "
                                                   r"checkpoint takes .* MiB\): \[Errno 28\] No space left on device: "
                                                   r".*\. Training stopped at step 4; checkpoint-2 is intact\. Free "
                                                   r"some space and resume with resume_from_checkpoint=latest\.$"):
        main(config)
    assert names(list_checkpoints(tmp_path)) == ["checkpoint-2"] and verify(tmp_path / "checkpoint-2") is None
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "model_index.json").exists()


# ---- 2. atomic checkpoints -------------------------------------------------------------------------------------------


def fake_checkpoint(folder: Path, files: dict[str, int], written: dict[str, int] | None = None) -> Path:
    """A checkpoint whose trainer_state.json records `files` (name → size) and whose files hold `written` bytes."""
    folder.mkdir(parents=True)
    for name, size in (files if written is None else written).items():
        (folder / name).write_bytes(b"\0" * size)
    (folder / STATE_FILE).write_text(json.dumps({"global_step": 1, "history": [], "files": files}))
    return folder


def test_latest_never_picks_an_incomplete_or_damaged_checkpoint(tmp_path):
    from accelerate import PartialState

    PartialState()  # for the warning's logger
    good = fake_checkpoint(tmp_path / "checkpoint-2", {"model.safetensors": 10})
    fake_checkpoint(tmp_path / "checkpoint-4", {"model.safetensors": 10}, written={"model.safetensors": 7})
    (tmp_path / "checkpoint-6").mkdir()  # killed before trainer_state.json
    (tmp_path / "checkpoint-8.tmp").mkdir()  # killed before the rename
    assert resolve_resume("latest", tmp_path) == good
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint`: '.*checkpoint-4' is incomplete or corrupt "
                                         r"\(model\.safetensors has 7 bytes, 10 were written\)"):
        resolve_resume(str(tmp_path / "checkpoint-4"), tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint-6' is incomplete or corrupt \(no trainer_state\.json\)"):
        resolve_resume(str(tmp_path / "checkpoint-6"), tmp_path)


def test_truncated_checkpoint_given_explicitly_is_a_clear_error_before_anything_is_built(tmp_path, capsys):
    broken = fake_checkpoint(tmp_path / "checkpoint-5", {"optimizer.bin": 100}, written={"optimizer.bin": 40})
    assert run_cli(main, "train", ["--config", TINY, f"output_dir={tmp_path}", f"resume_from_checkpoint={broken}"]) == 2
    assert capsys.readouterr().err == (f"error: `resume_from_checkpoint`: '{broken}' is incomplete or corrupt "
                                       "(optimizer.bin has 40 bytes, 100 were written); pick another checkpoint or "
                                       "use 'latest', which skips incomplete ones.\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]  # nothing written


# ---- 3. non-finite loss ----------------------------------------------------------------------------------------------

MAGENTA = (255, 0, 255)


@contextlib.contextmanager
def magenta_images_give_nan():
    """Stands in for a layer that overflows on one input (as fp16 does on GPUs): the VAE encoder returns NaN for an
    all-magenta image and is untouched otherwise. The NaN reaches the loss through the data alone."""
    from diffusers.models.autoencoders.vae import Encoder

    def hook(module, args):
        if isinstance(module, Encoder):
            x = args[0]
            magenta = ((x[:, 0] == 1) & (x[:, 1] == -1) & (x[:, 2] == 1)).flatten(1).all(1)
            if magenta.any():
                x = x.clone()
                x[magenta] = float("nan")
                return (x, *args[1:])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _Length:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        pass


def epoch_order(n: int, epoch: int, seed: int = 0) -> list[int]:
    sampler = EpochSampler(_Length(n), seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def saved_dataset(tmp_path: Path, poisoned: list[int], n: int = 8) -> Path:
    """n shapes images (a `datasets.save_to_disk` folder), rows in `poisoned` replaced by an all-magenta image."""
    images, texts = [], []
    for index in range(n):
        image, attributes = make_shapes_sample(index, 32, seed=0)
        images.append(Image.new("RGB", (32, 32), MAGENTA) if index in poisoned else image)
        texts.append(attributes["text"])
    path = tmp_path / "data"
    dataset = datasets.Dataset.from_dict({"image": images, "text": texts}).cast_column("image", datasets.Image())
    dataset.save_to_disk(path)
    return path


def nan_config(out: Path, data: Path, *overrides: str):
    return load_config(TINY, [f"output_dir={out}", f"dataset_name={data}", "validation_prompts=[]",
                              "validation_steps=null", "checkpoints_total_limit=null", "cfg_dropout=0", *overrides])


def test_nan_from_one_sample_skips_that_update_and_training_goes_on(tmp_path, caplog):
    # Batches of 4 from 8 rows: every epoch, one of its two steps holds the magenta row; never 3 bad steps in a row.
    poisoned = 5
    bad_steps = [2 * epoch + epoch_order(8, epoch).index(poisoned) // 4 + 1 for epoch in range(3)]
    out = tmp_path / "run"
    with magenta_images_give_nan(), caplog.at_level("WARNING"):
        main(nan_config(out, saved_dataset(tmp_path, [poisoned]), "max_train_steps=6", "checkpointing_steps=null",
                        "non_finite_loss=skip", "max_consecutive_non_finite=3"))
    history = json.loads((out / "loss_history.json").read_text())
    assert [h["step"] for h in history if h["loss"] != h["loss"]] == bad_steps  # NaN != NaN
    for step in bad_steps:
        assert f"Non-finite loss or gradient at step {step} (loss=nan" in caplog.text
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert all(torch.isfinite(w).all() for w in load_file(out / name).values()), name


@pytest.mark.parametrize("policy, poisoned_positions, why", [
    ("stop", [4], "non_finite_loss=stop"),  # the first NaN stops
    ("skip", [0, 4], "2 in a row, max_consecutive_non_finite=2"),  # steps 1 and 2 are both bad
])
def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, policy, poisoned_positions,
                                                                       why):
    order = epoch_order(8, 0)
    data = saved_dataset(tmp_path, [order[p] for p in poisoned_positions])  # position 4 is the first of step 2
    out = tmp_path / "run"
    args = ["--config", TINY, f"output_dir={out}", f"dataset_name={data}", "validation_prompts=[]",
            "validation_steps=null", "checkpointing_steps=1", "checkpoints_total_limit=null", "cfg_dropout=0",
            "max_train_steps=6", f"non_finite_loss={policy}", "max_consecutive_non_finite=2"]
    with magenta_images_give_nan():
        assert run_cli(main, "train", args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: Non-finite loss or gradient at step 2 (loss=nan")
    error = errors[0]
    assert f"Training stopped ({why}); the last good checkpoint, checkpoint-1, is untouched." in error
    assert names(list_checkpoints(out)) == ["checkpoint-1"] and not (out / "model_index.json").exists()
    weights = load_file(out / "checkpoint-1" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())

    with magenta_images_give_nan(), pytest.raises(NonFiniteLossError, match=r"at step 2"):  # --debug: the exception
        run_cli(main, "train", ["--debug", *args[:2], f"output_dir={tmp_path / 'again'}", *args[3:]])


# ---- 5. bad input, caught before anything is built or written --------------------------------------------------------


def imagefolder(tmp_path: Path, n: int = 8, fmt: str = "JPEG") -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for index in range(n):
        image, attributes = make_shapes_sample(index, 32, seed=0)
        name = f"{index:02d}.{fmt.lower()}"
        image.save(folder / name, format=fmt)
        rows.append(json.dumps({"file_name": name, "text": attributes["text"]}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_truncated_jpeg_stops_before_anything_is_written(tmp_path, capsys):
    folder = imagefolder(tmp_path)
    truncate(folder / "03.jpeg")
    out = tmp_path / "run"
    args = ["--config", TINY, f"output_dir={out}", "dataset_name=null", f"train_data_dir={folder}",
            f"cache_dir={tmp_path / 'hf'}"]
    assert run_cli(main, "train", args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: Cannot read image '{folder / '03.jpeg'}' (row 3) from "
                                                     f"'{folder}': ")  # then PIL's reason
    assert errors[0].endswith("Fix or remove it, or set on_bad_image=skip.")
    assert not out.exists()


def test_truncated_jpeg_is_skipped_with_a_counted_warning(tmp_path, caplog):
    folder = imagefolder(tmp_path, n=9)
    truncate(folder / "03.jpeg")
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        main(tiny(out, "dataset_name=null", f"train_data_dir={folder}", f"cache_dir={tmp_path / 'hf'}",
                  "on_bad_image=skip", "max_train_steps=2", "validation_prompts=[]"))
    assert "on_bad_image=skip: skipped 1 of 9 images that cannot be read: " in caplog.text and "03.jpeg" in caplog.text
    assert len(json.loads((out / "loss_history.json").read_text())) == 2


def test_two_processes_share_the_image_check_and_agree_on_what_they_found(tmp_path):
    """Each of 2 processes decodes its half of the images (rows 0-3 and 4-8 of 9): a bad image in the second half
    stops both with the one error naming it, before anything is written; skipped, both train on the same rows."""
    folder = imagefolder(tmp_path, n=9)
    truncate(folder / "07.jpeg")
    data = ["dataset_name=null", f"train_data_dir={folder}", f"cache_dir={tmp_path / 'hf'}", "max_train_steps=2",
            "validation_steps=null", "checkpointing_steps=null"]
    result = launch_two(tmp_path / "stopped", *data, port=29591)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: Cannot read image")]
    # Each process prints the one-line error, not a trace (the launcher's own trace of its failed children follows).
    assert result.returncode != 0 and "training/data.py" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 2 and all(line.startswith(f"error: Cannot read image '{folder / '07.jpeg'}' (row 7) from ")
                                    for line in errors), errors  # fmt: skip
    assert not (tmp_path / "stopped").exists()
    result = launch_two(tmp_path / "skipped", *data, "on_bad_image=skip", port=29592)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on_bad_image=skip: skipped 1 of 9 images that cannot be read: " in result.stderr
    assert "07.jpeg" in result.stderr
    assert len(json.loads((tmp_path / "skipped" / "loss_history.json").read_text())) == 2


@pytest.mark.parametrize("overrides, error, match", [
    (["dataset_name=null", "train_data_dir={tmp}/nowhere"], FileNotFoundError,
     r"`train_data_dir`: '.*nowhere' is not a directory"),
    (["dataset_name={tmp}/nowhere"], FileNotFoundError, r"`dataset_name`: '.*nowhere' looks like a path but does not"),
    (["dataset_name={tmp}/data", "caption_column=label"], ValueError,
     r"`caption_column`: 'label' is not a column of the dataset; available columns: image, text"),
    (["dataset_name={tmp}/data", "image_column=picture"], ValueError,
     r"`image_column`: 'picture' is not a column of the dataset; available columns: image, text"),
    (["dataset_name={tmp}/data", "train_batch_size=16"], ValueError,
     r"`train_batch_size`: 16 is larger than the dataset \(8 examples\)"),
])
def test_bad_data_settings_fail_before_anything_is_written(tmp_path, overrides, error, match):
    saved_dataset(tmp_path, [])
    out = tmp_path / "run"
    with pytest.raises(error, match=match):
        main(tiny(out, *(o.format(tmp=tmp_path) for o in overrides)))
    assert not out.exists()


def test_an_image_that_breaks_mid_run_stops_with_a_clear_error(tmp_path):
    """Readable when training starts, truncated while it runs: a one-line error naming the file, not a PIL trace."""
    folder = imagefolder(tmp_path)
    out = tmp_path / "run"
    log = tmp_path / "log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            command(out, "dataset_name=null", f"train_data_dir={folder}", f"cache_dir={tmp_path / 'hf'}",
                    "num_shapes_samples=8", "validation_steps=null", "max_train_steps=6"),
            stdout=sink, stderr=sink, text=True, env={**ENV, "SCULPT_TEST_KILL_AT": "step:1/SIGSTOP"})
        wait_until_frozen(process)
        truncate(folder / "05.jpeg")  # every image is read once per epoch, so a later step meets it
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=300) == 2
    lines = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in log.read_text()
    assert lines[0].startswith(f"error: Cannot read image '{folder / '05.jpeg'}' (row 5): ")
    assert lines[0].endswith("restore it and resume with resume_from_checkpoint=latest.")


def test_num_processes_mismatch_is_refused_before_anything_is_written(tmp_path):
    from training.errors import UsageError

    with pytest.raises(UsageError, match=r"`num_processes`: 2 but this launch runs 1 process\(es\)\. Run: accelerate "
                                         r"launch --multi_gpu --num_processes 2 scripts/train\.py"):
        main(tiny(tmp_path / "run", "num_processes=2"))
    assert not (tmp_path / "run").exists()


def test_cli_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown config key `learning_rat`"):
        run_cli(main, "train", ["--config", TINY, "--debug", "learning_rat=1e-4"])


# ---- 6. two processes ------------------------------------------------------------------------------------------------

# Logs, per rank, every Python-level write under SCULPT_AUDIT_DIR's output folder (open for writing, mkdir, rename,
# remove). Loaded into every process of `accelerate launch` as sitecustomize. C++/Rust writers (torch.save's zip
# writer, safetensors) are not seen, but whatever saves through them also makes its folder or a config file first.
AUDIT = '''
import os, sys
_out, _log = os.environ["SCULPT_AUDIT_OUT"], os.environ["SCULPT_AUDIT_DIR"]
if "RANK" in os.environ:
    _fd = os.open(os.path.join(_log, "rank" + os.environ["RANK"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def _audit(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            paths = [path] if writing else []
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            paths = [args[0]]
        elif event == "os.rename":
            paths = [args[0], args[1]]
        else:
            return
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(p)).startswith(_out):
                os.write(_fd, (event + " " + os.path.relpath(os.fsdecode(p), _out) + "\\n").encode())

    sys.addaudithook(_audit)
'''


def launch_two_command(out: Path, *overrides: str, port: int) -> list[str]:
    """`accelerate launch` of two CPU processes (gloo DDP) with batch 2 each."""
    return [*accelerate_launch(2, port), str(ROOT / "scripts" / "train.py"), "--config", TINY, f"output_dir={out}",
            "train_batch_size=2", *RUN, *overrides]


def launch_two(out: Path, *overrides: str, port: int, env: dict | None = None, timeout: int = 300):
    return subprocess.run(launch_two_command(out, *overrides, port=port), capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=timeout)


def test_two_processes_validate_checkpoint_and_save_without_deadlock_and_only_rank_0_writes(tmp_path):
    out, audit = tmp_path / "run", tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT)
    env = {"PYTHONPATH": os.pathsep.join([str(audit), os.environ.get("PYTHONPATH", "")]),
           "SCULPT_AUDIT_DIR": str(audit), "SCULPT_AUDIT_OUT": str(out)}
    result = launch_two(out, "max_train_steps=6", "checkpointing_steps=2", "validation_steps=3", port=29561, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert names(list_checkpoints(out)) == ["checkpoint-6"] and (out / "model_index.json").is_file()
    assert (out / "validation" / "step-000006.png").is_file()
    rank0 = (audit / "rank0").read_text().splitlines()
    assert "open config.yaml" in rank0 and "os.mkdir validation" in rank0  # the audit sees writes
    # Rank 1 only makes the checkpoint folder it writes its own RNG state into (accelerate's save_state).
    rank1 = (audit / "rank1").read_text().splitlines() if (audit / "rank1").exists() else []
    assert rank1 and all(line.startswith("os.mkdir checkpoint-") and line.endswith(".tmp") for line in rank1), rank1


@pytest.mark.slow  # ~1-2 min: two 2-process runs with a long validation
def test_a_validation_longer_than_ddp_timeout_does_not_time_the_other_rank_out(tmp_path):
    # Rank 0 validates alone (300 denoising steps, tens of seconds) while rank 1 waits on the main-process barrier,
    # whose timeout is `main_process_timeout` (2 h), not `ddp_timeout` (here 3 s): the run finishes. The control: the
    # same run with main_process_timeout=3 stops at that barrier, so validation did outlast ddp_timeout.
    slow = ("max_train_steps=2", "checkpointing_steps=null", "validation_steps=2", "num_inference_steps=300",
            "ddp_timeout=3")  # fmt: skip
    result = launch_two(tmp_path / "run", *slow, port=29563, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "validation" / "step-000002.png").is_file()
    control = launch_two(tmp_path / "control", *slow, "main_process_timeout=3", port=29564, timeout=300)
    assert control.returncode != 0 and "timed out" in control.stderr.lower(), control.stderr[-3000:]
    assert not (tmp_path / "control" / "model_index.json").exists()


def test_a_rank_that_dies_ends_the_run_with_a_clear_error_not_a_hang(tmp_path):
    out = tmp_path / "run"
    start = time.monotonic()
    result = launch_two(out, "max_train_steps=6", "checkpointing_steps=2", "validation_steps=null", port=29562,
                        env={"SCULPT_TEST_KILL_AT": "step:3@1"}, timeout=180)
    assert result.returncode != 0 and time.monotonic() - start < 120
    # torchrun's summary names the rank that died and how.
    summary = result.stderr.split("scripts/train.py FAILED")[1]
    assert "rank      : 1 (local_rank: 1)\n  exitcode  : -9" in summary and "Signal 9 (SIGKILL)" in summary
    assert names(list_checkpoints(out)) == ["checkpoint-2"] and verify(out / "checkpoint-2") is None


# ---- slow: exhaustive versions ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["step:1", "step:4", "step:5", "step:12", "checkpoint:4", "checkpoint:12",
                                     "validation:6", "validation:12", "save:12"])
def test_sigkill_at_every_phase_then_latest_matches(tmp_path, reference, kill_at):
    out = tmp_path / "run"
    assert train(out, "resume_from_checkpoint=latest", kill_at=kill_at).returncode == -signal.SIGKILL
    done = train(out, "resume_from_checkpoint=latest")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(reference, out)


def start_and_wait(out: Path, log: Path, rng: random.Random, sink) -> subprocess.Popen:
    """Start a resuming run and return at a random moment of it: in start-up (data, models; 1 in 6), else a random
    0-0.4 s after a random step still to come has finished (inside the next step, a checkpoint write or a
    validation), or, once every step is in a checkpoint, 0-3 s into the final save (which takes about 1.5 s)."""
    process = subprocess.Popen(command(out, "resume_from_checkpoint=latest"), stdout=sink, stderr=sink, env=ENV)
    checkpoints = list_checkpoints(out)
    resumed_at = int(checkpoints[-1].name.split("-")[1]) if checkpoints else 0
    if rng.random() < 1 / 6:
        delay, mark = rng.uniform(0.5, 5.0), None
    elif resumed_at < 12:
        delay, mark = rng.uniform(0.0, 0.4), re.compile(rf"\b{rng.randint(resumed_at + 1, 12)}/12 \[")
    else:
        delay, mark = rng.uniform(0.0, 3.0), re.compile(r"train:")
    while mark is not None and process.poll() is None and not mark.search(log.read_text()):
        time.sleep(0.01)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        pass
    return process


def where(log: Path, out: Path) -> str:
    """Where a stopped run was, from its log and what it left on disk."""
    text = log.read_text()
    steps = [int(k) for k in re.findall(r"\b(\d+)/12 \[", text)]
    if not steps:
        return "start-up"
    if "Saved the trained pipeline" in text:
        return "exit, after the final save"
    last = max(steps)
    if last == 12 and (out / "checkpoint-12" / STATE_FILE).exists():
        return "final save"
    state = f"after step {last}"
    if last % 6 == 0 and not (out / "validation" / f"step-{last:06d}.png").exists():
        state += ", before its validation image"
    partial = names(out.glob("*.tmp"))
    return state + (f", {partial[0]} partly written" if partial else "")


def kill_campaigns(tmp_path: Path, reference: Path, attempts: int, seed: int, stop) -> list[str]:
    """`attempts` runs, each resuming the last and stopped by `stop(process)` at a random moment (seeded); a run that
    finishes is compared with the uninterrupted one and the next starts afresh in a new folder. Returns where each
    run was when stopped."""
    rng = random.Random(seed)
    out, runs, seen = tmp_path / "run-0", 0, []
    for attempt in range(attempts + 1):
        log = tmp_path / f"attempt-{attempt}.log"
        with open(log, "w") as sink:
            if attempt < attempts:
                process = start_and_wait(out, log, rng, sink)
                if process.poll() is None:
                    stop(process)
            else:  # let the last one finish
                process = subprocess.Popen(command(out, "resume_from_checkpoint=latest"), stdout=sink, stderr=sink,
                                           env=ENV)
            process.wait(timeout=300)
        text, state = log.read_text(), where(log, out)
        stopped = re.search(r"Stopped by signal at step (\d+); checkpoint saved", text)
        if process.returncode == 0 and not stopped:
            assert_same_run(reference, out)
            seen.append(f"finished, matched bit for bit ({state})")
            runs += 1
            out = tmp_path / f"run-{runs}"
        else:
            seen.append((f"stopped cleanly at step {stopped.group(1)}" if stopped else state)
                        + f" [exit {process.returncode}]")
    return seen


@pytest.mark.slow
def test_sigkill_at_random_moments_then_latest_matches(tmp_path, reference):
    """24 SIGKILLs at random moments; every run, however often killed, resumes to the uninterrupted result."""

    def kill(process):
        process.kill()

    seen = kill_campaigns(tmp_path, reference, attempts=24, seed=6, stop=kill)
    assert all(s.startswith("finished") or s.endswith("[exit -9]") for s in seen), seen
    print(f"SIGKILL at random moments: {seen}")


@pytest.mark.slow
def test_sigterm_at_random_moments_then_resume_matches(tmp_path, reference):
    """12 SIGTERMs at random moments: from the loop on, the run stops cleanly (exit 0 and a checkpoint, or it
    finishes what it was saving); in start-up, with nothing to save yet, it ends as usual (exit -15)."""

    def terminate(process):
        process.send_signal(signal.SIGTERM)

    seen = kill_campaigns(tmp_path, reference, attempts=12, seed=4, stop=terminate)
    for state in seen:
        assert (state.startswith("finished") or state.startswith("stopped cleanly") and state.endswith("[exit 0]")
                or state in ("start-up [exit -15]", "exit, after the final save [exit -15]")), seen
    print(f"SIGTERM at random moments: {seen}")


@pytest.mark.slow
def test_a_rank_that_hangs_ends_the_run_after_ddp_timeout(tmp_path):
    """Rank 1 freezes (SIGSTOP) with its connections open, so no peer sees it die; rank 0's collective times out
    after `ddp_timeout` and torchrun ends the run (it waits 30 s for the frozen rank before SIGKILL)."""
    start = time.monotonic()
    result = launch_two(tmp_path / "run", "max_train_steps=6", "validation_steps=null", "ddp_timeout=10", port=29563,
                        env={"SCULPT_TEST_KILL_AT": "step:3@1/SIGSTOP"}, timeout=300)
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and elapsed < 120, elapsed
    assert "Timed out waiting 10000ms" in result.stderr


@pytest.fixture(scope="module")
def reference_two(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference_two")
    result = launch_two(out, port=29564)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_killed_mid_checkpoint_resume_exactly(tmp_path, reference_two):
    killed = tmp_path / "killed"
    assert launch_two(killed, port=29565, env={"SCULPT_TEST_KILL_AT": "checkpoint:8@0"}).returncode != 0
    assert names(list_checkpoints(killed)) == ["checkpoint-4"]
    done = launch_two(killed, "resume_from_checkpoint=latest", port=29566)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(reference_two, killed)


def frozen_child(parent: int, timeout: float = 300) -> int:
    """The pid of a child of `parent` that has stopped itself (SIGSTOP through the hook)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, IndexError):
                continue
            if state == "T" and int(ppid) == parent:
                return int(stat.parent.name)
        time.sleep(0.05)
    raise AssertionError("no rank reached the hook")


@pytest.mark.slow
def test_two_processes_stop_cleanly_on_sigterm_to_the_launcher_and_resume_exactly(tmp_path, reference_two):
    """SIGTERM to `accelerate launch` (what a job scheduler sends): torchrun passes it to both ranks, which finish the
    step, write a checkpoint together and exit 0 (torchrun gives them 30 s before SIGKILL)."""
    out, log = tmp_path / "run", tmp_path / "log"
    with open(log, "w") as sink:
        launcher = subprocess.Popen(launch_two_command(out, port=29567), stdout=sink, stderr=sink,
                                    env={**ENV, "SCULPT_TEST_KILL_AT": "step:6@0/SIGSTOP"})
        rank0 = frozen_child(launcher.pid)  # rank 0 is frozen mid-step 6; rank 1 waits for it in the all-reduce
        launcher.send_signal(signal.SIGTERM)
        time.sleep(2)
        os.kill(rank0, signal.SIGCONT)
        launcher.wait(timeout=300)
    text = log.read_text()
    assert "Stopped by signal at step 6; checkpoint saved. Resume with: resume_from_checkpoint=latest" in text, text
    assert names(list_checkpoints(out)) == ["checkpoint-6"]
    done = launch_two(out, "resume_from_checkpoint=latest", port=29568)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(reference_two, out)
    print(f"launcher exit code after the clean stop: {launcher.returncode}")
