"""Checkpoints that are either complete or absent.

A checkpoint is written by `accelerator.save_state` into `checkpoint-<step>.tmp`, completed with the EMA weights and
`trainer_state.json` (written last), then renamed to `checkpoint-<step>`. A rename within a folder is atomic, so a
kill at any moment leaves either the previous set of checkpoints or the previous set plus a complete new one (and
maybe a stale `.tmp`, which is ignored and cleaned up). Old checkpoints are deleted only after the new one is in
place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from accelerate.logging import get_logger

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
    which must be complete."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"`resume_from_checkpoint`: {str(path)!r} is not a directory (or use 'latest').")
    if not (path / STATE_FILE).is_file():
        raise ValueError(
            f"`resume_from_checkpoint`: {str(path)!r} is incomplete or corrupt (no {STATE_FILE}); "
            f"pick another checkpoint or use 'latest', which skips incomplete ones."
        )
    return path


def read_state(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"`resume_from_checkpoint`: cannot read {checkpoint / STATE_FILE}: {error}") from error


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict, ema=None, limit: int | None = None):
    """Write checkpoint-<step> atomically (all ranks call this; only the main process touches the filesystem
    outside `save_state`)."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if ema is not None:
            ema.save_pretrained(str(tmp / EMA_FOLDER))
        _write_json_durably(tmp / STATE_FILE, state)
        if final.exists():  # re-saving the same step (e.g. a stop signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if limit is not None:
            for old in list_checkpoints(output_dir)[:-limit]:
                logger.info(f"Removing {old.name} (checkpoints_total_limit={limit})")
                shutil.rmtree(old, ignore_errors=True)
        for stale in output_dir.glob("checkpoint-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_json_durably(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
