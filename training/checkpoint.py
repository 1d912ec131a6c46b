"""Checkpoints that are either complete or absent.

A checkpoint is written by `accelerator.save_state` into `checkpoint-<step>.tmp`, completed with the EMA weights and
`trainer_state.json` (written last, listing every file and its size), flushed to disk, then renamed to
`checkpoint-<step>`. A rename within a folder is atomic, so a kill at any moment leaves either the previous set of
checkpoints or the previous set plus a complete new one (and maybe a stale `.tmp`, which is ignored and cleaned up).
Old checkpoints are deleted only after the new one is in place, and are renamed to `.tmp` before being deleted, so a
kill during the deletion leaves nothing that looks complete. A write that fails (a full disk) removes its `.tmp`,
leaves the previous checkpoints as they were and stops the run with `CheckpointWriteError`.

`trainer_state.json` also records the settings that decide what is trained (`fingerprint`): a resume refuses a
checkpoint written with other settings (`check_resumable`), and one whose model weights are pickles unless the config
allows pickle. A run that overwrites its output_dir first removes the old run's checkpoints (`remove_checkpoints`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

from accelerate.logging import get_logger

from pipelines.loading import folder_pickle_only, pickle_only

from .config import RESUMABLE_CHANGES, config_to_dict
from .errors import CheckpointWriteError

logger = get_logger(__name__)

STATE_FILE = "trainer_state.json"
EMA_FOLDER = "unet_ema"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """`latest` → newest complete checkpoint in `output_dir` (None if there is none); a path → that checkpoint,
    which must be complete. Both are checked against the file sizes recorded in their `trainer_state.json`."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        for checkpoint in reversed(list_checkpoints(output_dir)):
            problem = verify(checkpoint)
            if problem is None:
                return checkpoint
            # Only damage from outside (a truncating copy, a bad disk) gets here; an older checkpoint resumes to the
            # same result, just later.
            logger.warning(f"Skipping {checkpoint}: {problem}", main_process_only=True)
        return None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"`resume_from_checkpoint`: {str(path)!r} is not a directory (or use 'latest').")
    problem = verify(path)
    if problem is not None:
        raise ValueError(
            f"`resume_from_checkpoint`: {str(path)!r} is incomplete or corrupt ({problem}); pick another checkpoint "
            f"or use 'latest', which skips incomplete ones."
        )
    return path


def verify(checkpoint: Path) -> str | None:
    """None if `checkpoint` is complete, else what is wrong with it."""
    if not (checkpoint / STATE_FILE).is_file():
        return f"no {STATE_FILE}"
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        return f"cannot read {STATE_FILE}: {error}"
    for name, size in state.get("files", {}).items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def fingerprint(config, num_processes: int, resumable: frozenset[str] = RESUMABLE_CHANGES) -> dict:
    """The settings of `config` that decide what is trained (all keys but `resumable`: the diffusion stage's
    RESUMABLE_CHANGES, or the VAE stage's VAE_RESUMABLE_CHANGES), as JSON values, with the number of processes the run
    was launched with (it sets the effective batch)."""
    values = {k: v for k, v in config_to_dict(config).items() if k not in resumable}
    return json.loads(json.dumps({**values, "num_processes": num_processes}))


def check_resumable(checkpoint: Path, config, num_processes: int, resumable: frozenset[str] = RESUMABLE_CHANGES,
                    ema_folder: str = EMA_FOLDER, output_key: str = "output_dir") -> None:
    """Refuse to resume from `checkpoint` when it was written with other settings (naming the keys that differ) or
    holds model weights only as pickles and `config.allow_pickle` is not set. `resumable`, `ema_folder` and
    `output_key` are the stage's (the defaults are the diffusion stage's)."""
    recorded = read_state(checkpoint).get("config")
    if recorded is None:
        logger.warning(f"{checkpoint} records no settings (written by an older sculpt); cannot check that it is from "
                       f"this config.", main_process_only=True)
    else:
        differ = differences(recorded, fingerprint(config, num_processes, resumable))
        if differ:
            details = "; ".join(f"{k}: {_short(there)} there, {_short(now)} now" for k, there, now in differ[:6])
            more = f" (and {len(differ) - 6} more)" if len(differ) > 6 else ""
            raise ValueError(
                f"`resume_from_checkpoint`: {str(checkpoint)!r} was written by a run with other settings: {details}"
                f"{more}. Resume with the settings it was written with, or start a new run (another {output_key}, or "
                f"overwrite_output_dir=true without resume_from_checkpoint)."
            )
    pickled = pickled_weights(checkpoint, ema_folder)
    if pickled and not config.allow_pickle:
        raise ValueError(
            f"`resume_from_checkpoint`: {str(checkpoint)!r} holds model weights only as pickle ({', '.join(pickled)}), "
            f"which can run arbitrary code when loaded (sculpt writes safetensors). Set allow_pickle=true if you trust "
            f"it."
        )


def pickled_weights(checkpoint: Path, ema_folder: str = EMA_FOLDER) -> list[str]:
    """Model weight files of `checkpoint` that have no safetensors twin: accelerate's `pytorch_model[_i].bin` (it
    writes `model[_i].safetensors` by default) and the EMA's `diffusion_pytorch_model.bin` in `ema_folder`. The
    optimizer, LR-schedule and RNG states are pickles whatever the settings; accelerate reads them with torch's
    `weights_only` unpickler, which builds tensors and plain containers and runs no code."""
    # FSDP's full state dict (pytorch_model_fsdp[_i].bin) is read with `weights_only` too (accelerate's
    # load_fsdp_model), like the optimizer's.
    weights = [p.name for p in checkpoint.iterdir() if p.is_file() and p.name.startswith(("model", "pytorch_model"))
               and not p.name.startswith("pytorch_model_fsdp")]  # fmt: skip
    found = []
    for model in sorted({_model_key(name) for name in weights}):  # accelerate's model, model_1, ...
        found += pickle_only(name for name in weights if _model_key(name) == model)
    found += [f"{ema_folder}/{name}" for name in folder_pickle_only(checkpoint / ema_folder)]
    return found


def _model_key(name: str) -> str:
    """"pytorch_model_1.bin" and "model_1.safetensors" are one model's weights in two formats: "model_1"."""
    return name.removeprefix("pytorch_").partition(".")[0]


def differences(recorded: dict, current: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(key, recorded value, current value) for each key both hold with different values; dicts entry by entry
    ("unet_config.layers_per_block"). A key only one side holds (a setting added or removed by a newer sculpt) is
    not compared."""
    found = []
    for key in current:
        if key not in recorded or recorded[key] == current[key]:
            continue
        there, now = recorded[key], current[key]
        if isinstance(there, dict) and isinstance(now, dict):
            entries = {**dict.fromkeys(there, None), **dict.fromkeys(now, None)}
            found += differences({k: there.get(k) for k in entries}, {k: now.get(k) for k in entries},
                                  f"{prefix}{key}.")  # fmt: skip
        else:
            found.append((prefix + key, there, now))
    return found


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def remove_checkpoints(output_dir: str | Path) -> list[str]:
    """Delete every checkpoint (complete or `.tmp`) in `output_dir`, each renamed to `.tmp` first so that a kill
    midway leaves nothing `latest` would pick. Returns the names removed."""
    output_dir = Path(output_dir)
    removed = []
    for old in sorted(output_dir.glob("checkpoint-*")):
        if not old.is_dir():
            continue
        removed.append(old.name)
        doomed = old if old.name.endswith(".tmp") else old.with_name(old.name + ".tmp")
        if doomed != old:
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return removed


def read_state(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"`resume_from_checkpoint`: cannot read {checkpoint / STATE_FILE}: {error}") from error


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict, ema=None, limit: int | None = None,
                    ema_folder: str = EMA_FOLDER):
    """Write checkpoint-<step> atomically (all ranks call this; only the main process touches the filesystem
    outside `save_state`, where accelerate has each rank write its own RNG state). `ema` is saved in `ema_folder`
    (the VAE stage names its own)."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    # 1. Every rank writes its part (the main one: models, optimizer, schedule; each: its RNG state), then all
    #    learn whether every part was written, so that on a failure (a full disk) they stop together.
    error = None
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process and ema is not None:
            ema.save_pretrained(str(tmp / ema_folder))
    except Exception as caught:  # a full disk shows up as OSError, torch's RuntimeError or SafetensorError
        error = caught
    kill_point("checkpoint", step, accelerator.process_index)
    # 2. The main process lists what was written and completes the checkpoint with trainer_state.json.
    if _all_ranks_ok(accelerator, error is None) and accelerator.is_main_process:
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        try:
            _write_json_durably(tmp / STATE_FILE, {**state, "files": files})
            _fsync_tree(tmp)
        except OSError as caught:
            error = caught
    if not _all_ranks_ok(accelerator, error is None):
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # give back the space the partial write took
        previous = list_checkpoints(output_dir)
        kept = f"{previous[-1].name} is intact" if previous else "there is no earlier checkpoint"
        # The error itself may not say the disk is full (torch's zip writer reports "unexpected pos"), so say how
        # much room there is.
        room = f"{_mib(shutil.disk_usage(output_dir).free)} free on its disk"
        if previous:
            room += f", a checkpoint takes {_mib(_size(previous[-1]))}"
        raise CheckpointWriteError(
            f"Could not write checkpoint-{step} in {output_dir} ({room}): "
            f"{error or 'another process failed to write its part'}. Training stopped at step {step}; {kept}. Free "
            f"some space and resume with resume_from_checkpoint=latest."
        ) from error
    # 3. Publish it with one atomic rename, then rotate.
    if accelerator.is_main_process:
        if final.exists():  # re-saving the same step (e.g. a stop signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if limit is not None:
            for old in list_checkpoints(output_dir)[:-limit]:
                logger.info(f"Removing {old.name} (checkpoints_total_limit={limit})")
                doomed = old.with_name(old.name + ".tmp")
                shutil.rmtree(doomed, ignore_errors=True)
                os.replace(old, doomed)  # no longer complete, even if the deletion below is cut short
                shutil.rmtree(doomed, ignore_errors=True)
        for stale in output_dir.glob("checkpoint-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def kill_point(phase: str, step: int, rank: int = 0) -> None:
    """Test hook, inert unless the environment sets it: SCULPT_TEST_KILL_AT="<phase>:<step>" (or
    "<phase>:<step>@<rank>" for one process) makes the process SIGKILL itself there, so tests/test_reliability.py
    can crash a run exactly mid-step ("step": after backward, before the update), mid-checkpoint ("checkpoint": model
    and optimizer files written, trainer_state.json not), mid-validation ("validation") or mid-final-save ("save").
    A "/SIGSTOP" suffix freezes the process instead (a rank that hangs rather than dies)."""
    if _KILL_AT and _KILL_AT in (f"{phase}:{step}", f"{phase}:{step}@{rank}"):
        os.kill(os.getpid(), getattr(signal, _KILL_SIGNAL or "SIGKILL"))


_KILL_AT, _, _KILL_SIGNAL = os.environ.get("SCULPT_TEST_KILL_AT", "").partition("/")


def _all_ranks_ok(accelerator, ok: bool) -> bool:
    if accelerator.num_processes == 1:
        return ok
    import torch

    flag = torch.tensor([float(ok)], device=accelerator.device)
    return bool(accelerator.gather(flag).min().item() == 1.0)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _write_json_durably(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(folder: Path) -> None:
    """Flush every file to disk before the rename publishes the checkpoint, so a power cut cannot leave a complete-
    looking checkpoint with empty files (a kill alone cannot: the page cache survives it)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
