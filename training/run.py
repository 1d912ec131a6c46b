"""The run layer both training stages share (training/train_vae.py, stage 1; training/train.py, stage 2): plain
functions that each stage's `main(config)` calls in its numbered stages, so that the two read side by side and a fix
to how runs start, resume, step, checkpoint or stop is made once.

    make_accelerator        CPU DDP when there is no GPU; a launch that does not match the config is refused
    wait_for_main_process / main_process_first
                            barriers for work one process does alone, with `main_process_timeout`
    train_data              the dataset and its loader: loaded (data.py) or streamed (streaming.py)
    check_output_dir        refuse a folder that holds another run, unless overwriting or resuming it
    start_output_dir        remove an overwritten run's checkpoints, write the resolved config
    make_ema / make_lr_scheduler
    resume                  weights, optimizer, LR schedule and EMA from a checkpoint
    EpochPlan / train_batches
                            where a (resumed) run is in its epochs, and its batches from there
    sample_generators       the per-sample generators of a step (noise, timesteps, caption dropout)
    guarded_step / after_update
                            clip and apply the update unless it is NaN/Inf on any rank; EMA or the non-finite policy
    checkpoint_or_stop      the end of every step: periodic checkpoint, and a signal's checkpoint-and-exit
    StopSignal              SIGINT / SIGTERM ask the run to stop after the current step

Randomness that decides *what* a step trains on is drawn from generators seeded by (seed, step, micro-step, position
of the sample in the global batch) (`sample_generators`). That makes a resumed run draw exactly what the
uninterrupted run drew, without restoring RNG state, and N processes with per-process batch B draw what one process
with batch N·B draws.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import sharded
from .config import BUILTIN_DATASETS, save_config
from .data import build_train_dataloader, load_train_dataset, seeded_generator
from .errors import NonFiniteLossError, UsageError
from .streaming import StreamLoader, load_stream

logger = get_logger(__name__)

# Launches whose every process holds whole parameters (one process, or DDP on CPUs or GPUs): where gradients are
# clipped with torch's foreach norm and where `dynamo_backend` compiles the UNet's training forward.
UNSHARDED = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


# ---------------------------------------------------------------------------------------------------------------------
# Starting a run
# ---------------------------------------------------------------------------------------------------------------------
def cpu_bf16_warning(mixed_precision: str, device_type: str, remedy: str = "mixed_precision=no") -> str | None:
    """The warning for bf16 autocast on a CPU without bf16 units (no AVX512-BF16 / AMX: oneDNN's own probe), where
    bf16 convolutions and matmuls are emulated: ~1 GFLOP/s against ~80 in fp32 on the machines measured
    (docs/performance.md). None when bf16 is fine or not asked for; `remedy` is how the caller's user turns it off."""
    if mixed_precision != "bf16" or device_type != "cpu" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return ("mixed_precision: 'bf16' on a CPU without bf16 units (oneDNN reports no AVX512-BF16 / AMX): bf16 "
            f"kernels are emulated here and train tens of times slower than fp32; use {remedy}.")


def compiled_autocast_problem(backend: str, mixed_precision: str, device_type: str) -> str | None:
    """Why a compiled step under autocast cannot be trusted here, or None: torch 2.13's inductor gets the
    bf16-autocast UNet's backward wrong on CPU (scripts/check_compiled_gradients.py; docs/performance.md). The
    trainer refuses the combination; bench_step.py says what its compiled bf16 row then times."""
    if backend != "inductor" or device_type != "cpu" or mixed_precision == "no":
        return None
    return (f"torch {torch.__version__}'s inductor computes wrong gradients for the bf16-autocast UNet here (the "
            f"forward matches eager, the backward does not: a quickstart trained so judged 0.04 instead of 0.92; "
            f"docs/performance.md)")


def make_accelerator(config, output_dir: Path, script: str = "scripts/train.py") -> Accelerator:
    """An Accelerator for `config`. It asks for CPU explicitly when there is no GPU: otherwise
    `accelerate launch --multi_gpu` on a CPU machine silently runs N independent single-process trainings
    instead of one DDP (gloo) run. A launch that still ends up with fewer processes than WORLD_SIZE is refused, and
    so is one with another number of processes than `num_processes` (the effective batch depends on it)."""
    check_tracker(config.report_to)
    launcher = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no").lower()  # accelerate launch's --dynamo_backend
    if launcher not in ("no", config.dynamo_backend):
        raise UsageError(
            f"accelerate launch asked for torch.compile (dynamo backend {launcher!r}, from --dynamo_backend or its "
            f"config file), which compiles the whole wrapped model, sampling and checkpoints included. sculpt compiles "
            f"the UNet's training forward itself: launch with --dynamo_backend no and set dynamo_backend={launcher} "
            f"(scripts/train.py; the VAE stage runs eager)."
        )
    accelerator = Accelerator(
        dynamo_backend="no",  # never accelerate's compile of the prepared model: see `compiled_forward`
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)),
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=config.ddp_timeout))],
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size != accelerator.num_processes:
        raise UsageError(
            f"WORLD_SIZE={world_size} but accelerate set up {accelerator.num_processes} process(es), so they would "
            f"train independently. Run: accelerate launch --multi_gpu --num_processes {world_size} {script} ..."
        )
    if config.num_processes is not None and config.num_processes != accelerator.num_processes:
        raise UsageError(
            f"`num_processes`: {config.num_processes} but this launch runs {accelerator.num_processes} process(es). "
            f"Run: accelerate launch --multi_gpu --num_processes {config.num_processes} {script} ... (or set "
            f"num_processes={accelerator.num_processes}, which changes the effective batch)."
        )
    sharded.enable_fsdp_on_cpu(accelerator, config, script)
    problem = compiled_autocast_problem(config.dynamo_backend, config.mixed_precision, accelerator.device.type)
    if problem:
        raise UsageError(f"`dynamo_backend`: 'inductor' with mixed_precision={config.mixed_precision} on a CPU: "
                         f"{problem}. Use mixed_precision=no with it, or dynamo_backend=no.")
    if config.dynamo_backend != "no" and accelerator.distributed_type not in UNSHARDED:
        raise UsageError(
            f"`dynamo_backend`: {config.dynamo_backend!r} compiles the UNet's forward for one process or DDP; this "
            f"launch is {accelerator.distributed_type.value}. Use dynamo_backend=no with it."
        )
    warning = cpu_bf16_warning(accelerator.mixed_precision, accelerator.device.type)
    if warning:
        logger.warning(warning, main_process_only=True)
    if accelerator.num_processes > 1:
        # A gloo group of its own, so its timeout is not `ddp_timeout` (a barrier's timeout is its group's), made now:
        # creating it is itself collective, which would wait `ddp_timeout` for a main process busy validating.
        _MAIN_WAIT["group"] = torch.distributed.new_group(
            backend="gloo", timeout=datetime.timedelta(seconds=config.main_process_timeout))
    return accelerator


_MAIN_WAIT: dict = {}  # the process group of `wait_for_main_process`, made by `make_accelerator`


def wait_for_main_process(accelerator) -> None:
    """`accelerator.wait_for_everyone()` where the others wait for work the main process does alone (validation,
    the judge, the tokenizer, the final pipeline and card) or that ranks finish unevenly (the disk latent cache):
    up to `main_process_timeout` seconds instead of `ddp_timeout`, so a slow validation does not time the others out
    (accelerate#3861, diffusers#9936) while a rank that hangs in training is still found after `ddp_timeout`."""
    if accelerator.num_processes > 1:
        torch.distributed.barrier(group=_MAIN_WAIT["group"])


@contextlib.contextmanager
def main_process_first(accelerator):
    """accelerate's `main_process_first`, with `wait_for_main_process`'s timeout."""
    if not accelerator.is_main_process:
        wait_for_main_process(accelerator)
    yield
    if accelerator.is_main_process:
        wait_for_main_process(accelerator)


def train_data(config, accelerator, batch_size: int | None = None, multiple: int | None = None, pixels: bool = True):
    """(dataset, loader): a loaded dataset and its map-style loader (data.py), or with `streaming` the stream of
    shards and its loader (streaming.py), which splits the data across the processes itself (`prepare` passes it
    through). `multiple`: what bucket sides divide by (bucketing); `pixels=False`: batches of captions alone (for
    cached latents)."""
    if config.streaming:
        stream = load_stream(config)
        loader = StreamLoader(stream, config, accelerator.process_index, accelerator.num_processes, batch_size,
                              accumulation=config.gradient_accumulation_steps)  # fmt: skip
        logger.info(f"streaming: {loader.describe()}", main_process_only=True)
        return stream, loader
    # A built-in dataset is built once, by the main process. Any other source every process loads at once (datasets
    # locks its cache while one builds it), each checking its share of the images.
    builtin = config.dataset_name in BUILTIN_DATASETS
    with main_process_first(accelerator) if builtin else contextlib.nullcontext():
        dataset = load_train_dataset(config)
    loader, _ = build_train_dataloader(dataset, config, batch_size, num_processes=accelerator.num_processes,
                                       multiple=multiple, pixels=pixels)  # fmt: skip
    return dataset, loader


def check_tracker(report_to: str) -> None:
    """The tracker's package is installed, or one named error before anything starts."""
    import importlib.util

    packages = {"tensorboard": "tensorboard", "wandb": "wandb"}
    if report_to in packages and importlib.util.find_spec(packages[report_to]) is None:
        raise ValueError(f"`report_to`: {report_to!r} needs the {packages[report_to]} package: pip install "
                         f"{packages[report_to]} (or report_to=none).")  # fmt: skip


def log_images(accelerator, name: str, grid, step: int) -> None:
    """A grid of images to every tracker that takes images: TensorBoard as one HWC image, the others (wandb) through
    accelerate's `log_images`."""
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(name, np.asarray(grid), step, dataformats="HWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({name: [grid]}, step=step)


def check_output_dir(config, output_dir: Path, key: str, saved: tuple[str, ...]) -> None:
    """Refuse to train into a folder that holds another run (one of the `saved` files, or a checkpoint), unless told
    to overwrite or to resume it (`latest` with no checkpoint yet is a resume too: a run killed before its first
    checkpoint restarts from scratch). `key` is the stage's config key for the folder."""
    if config.resume_from_checkpoint or config.overwrite_output_dir or not output_dir.exists():
        return
    markers = [p.name for p in output_dir.iterdir() if p.name in saved]
    markers += [p.name for p in ckpt.list_checkpoints(output_dir)]
    if markers:
        raise ValueError(
            f"`{key}`: {str(output_dir)!r} already holds a run ({', '.join(sorted(markers)[:3])}). "
            f"Set `overwrite_output_dir=true` to replace it, `resume_from_checkpoint=latest` to continue it, "
            f"or choose another `{key}`."
        )


def start_output_dir(accelerator, config, output_dir: Path, config_file: str, run: str = "run") -> None:
    """Once every rank has checked its input: on the main process, remove the checkpoints of the run that
    `overwrite_output_dir` replaces (they would be what `latest` resumes and what rotation keeps over this run's),
    create the folder and write the resolved config into `config_file`."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if config.overwrite_output_dir and not config.resume_from_checkpoint:
            removed = ckpt.remove_checkpoints(output_dir)
            if removed:
                logger.info(f"overwrite_output_dir: removed the previous {run}'s {', '.join(removed)}")
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / config_file)
    wait_for_main_process(accelerator)


def make_ema(config, model, device):
    """The EMA of `model`'s weights (with warmup, as configured), or None when `use_ema` is off."""
    if not config.use_ema:
        return None
    ema = EMAModel(
        model.parameters(),
        decay=config.ema_decay,
        use_ema_warmup=config.ema_warmup,
        inv_gamma=config.ema_inv_gamma,
        power=config.ema_power,
        model_cls=type(model),
        model_config=model.config,
    )
    ema.to(device)
    return ema


def compiled_forward(config, accelerator, model):
    """`model` as the training step calls it: itself, or with `dynamo_backend` a `torch.compile` wrapper around it
    (after `prepare`, so around DDP's wrapper: torch's supported way, whose graphs break at DDP's gradient buckets).
    The wrapper shares the module's parameters; everything else (EMA, checkpoints, validation, the judge, the saved
    pipeline) keeps using the module itself, so sampling stays eager and nothing saved carries `_orig_mod.` names."""
    if config.dynamo_backend == "no":
        return model
    accelerator.print(f"dynamo_backend={config.dynamo_backend}: the first step compiles the UNet's forward and "
                      f"backward (minutes on a CPU, unless torch's compile cache already holds it)")
    return torch.compile(model, backend=config.dynamo_backend)


def make_optimizer(config, params, learning_rate: float) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay, arXiv 1711.05101) with the config's betas, decay and eps, fused into one
    kernel where torch has one for the parameters' device (CUDA, and CPU since torch 2.4): the per-tensor loop of the
    default implementation cost ~4× as much for the quickstart UNet's 324 tensors (docs/performance.md)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                for p in params)  # fmt: skip
    return torch.optim.AdamW(params, lr=learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             weight_decay=config.adam_weight_decay, eps=config.adam_epsilon, fused=fused or None)


def make_lr_scheduler(config, optimizer, num_processes: int, max_train_steps: int):
    """The config's LR schedule. accelerate steps a prepared scheduler once per process per optimizer step, so warmup
    and total are counted in "process steps" (as diffusers' training scripts do)."""
    return get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=max_train_steps * num_processes,
    )


def resume(accelerator, config, resume_from: Path | None, ema, ema_folder: str, output_dir: Path) -> dict:
    """Weights, optimizer, LR schedule (accelerate's state) and EMA from `resume_from`; returns the checkpoint's
    trainer state ({"global_step", "history", ...}), or {} when starting from scratch."""
    if resume_from is None:
        if config.resume_from_checkpoint == "latest":
            accelerator.print(f"No complete checkpoint in {output_dir}; starting from scratch.")
        return {}
    state = ckpt.read_state(resume_from)
    accelerator.load_state(str(resume_from))
    if ema is not None:
        # type(ema): an adapter EMA (training/lora.py) stores only the adapters, in its own format
        loaded = type(ema).from_pretrained(str(resume_from / ema_folder), model_cls=ema.model_cls)
        ema.load_state_dict(loaded.state_dict())
        ema.to(accelerator.device)
    accelerator.print(f"Resumed from {resume_from} at step {state['global_step']}")
    return state


# ---------------------------------------------------------------------------------------------------------------------
# Epochs, batches and per-sample randomness
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpochPlan:
    """Where a run starting at `global_step` stands in its epochs. A resumed run skips the batches of the current
    epoch that were already trained on (`resume_batches`) instead of replaying the epoch."""

    batches_per_epoch: int
    steps_per_epoch: int
    num_epochs: int
    first_epoch: int
    resume_batches: int
    finished: bool  # resumed from the final checkpoint: only the saving is left

    @classmethod
    def make(cls, batches_per_epoch: int, accumulation: int, max_train_steps: int, global_step: int) -> EpochPlan:
        steps_per_epoch = max(batches_per_epoch // accumulation, 1)
        return cls(
            batches_per_epoch=batches_per_epoch,
            steps_per_epoch=steps_per_epoch,
            num_epochs=math.ceil(max_train_steps / steps_per_epoch),
            first_epoch=global_step // steps_per_epoch,
            resume_batches=(global_step % steps_per_epoch) * accumulation,
            finished=global_step >= max_train_steps,
        )


def train_batches(accelerator, dataloader, plan: EpochPlan) -> Iterator[tuple[int, dict]]:
    """(micro-step, batch) from the resume point to the end of the last epoch; the micro-step is the batch's index in
    its epoch, which `sample_generators` keys on. The caller stops once it has trained its steps."""
    if plan.finished:
        return
    for epoch in range(plan.first_epoch, plan.num_epochs):
        skip = plan.resume_batches if epoch == plan.first_epoch else 0
        if isinstance(dataloader, StreamLoader):  # streaming: batch `skip` is found from the shards' sizes, not read to
            dataloader.set_epoch(epoch)
            yield from enumerate(dataloader.starting_at(skip), start=skip)
            continue
        # Through accelerate's loader, not our sampler: at every __iter__ it re-sets the sampler's epoch from its own
        # iteration counter, which after a resume would otherwise restart at 0 and replay epoch 0's order. And on the
        # prepared loader itself: under several processes the loader that skips a resumed epoch's first batches
        # wraps the sampler one level deeper than accelerate's `set_epoch` looks, so its own call never reaches it.
        dataloader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        loader.set_epoch(epoch)
        yield from enumerate(loader, start=skip)


def sample_generators(seed: int, step: int, micro_step: int, accelerator, batch_size: int) -> list[torch.Generator]:
    """One generator per sample, seeded by where the sample sits in the global batch of this (step, micro-step).
    accelerate gives process r the r-th slice of each group of per-process batches, so position r·B + j here is
    position r·B + j of one process's batch of N·B."""
    first = accelerator.process_index * batch_size
    return [seeded_generator(seed, step, micro_step, first + j) for j in range(batch_size)]


def progress_bar(accelerator, total: int, initial: int, desc: str) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, disable=not accelerator.is_local_main_process)


# ---------------------------------------------------------------------------------------------------------------------
# The update and the end of a step
# ---------------------------------------------------------------------------------------------------------------------
def guarded_step(accelerator, params, loss, optimizer, lr_scheduler, config) -> tuple[bool, torch.Tensor | None]:
    """Clip and apply the update, unless the loss or gradient is NaN/Inf on any rank: then the bad gradients are
    dropped and neither the weights nor the LR schedule move. Returns (finite, grad_norm); on accumulation
    micro-steps (no gradient sync yet) there is nothing to check: (True, None)."""
    finite, grad_norm = True, None
    if accelerator.sync_gradients:
        grad_norm = sharded.full_norm(clip_gradients(accelerator, params, config.max_grad_norm))
        finite = all_finite(accelerator, loss, grad_norm)
    if finite:
        optimizer.step()
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return finite, grad_norm


def clip_gradients(accelerator, params, max_norm: float) -> torch.Tensor:
    """accelerate's `clip_grad_norm_`, with torch's multi-tensor (foreach) norm where accelerate would call torch's
    plain one (no sharding: one process, or DDP): ~2× faster over many small tensors on CPU."""
    if accelerator.distributed_type in UNSHARDED:
        accelerator.unscale_gradients()
        return torch.nn.utils.clip_grad_norm_(list(params), max_norm, foreach=True)
    return accelerator.clip_grad_norm_(params, max_norm)


def all_finite(accelerator, loss: torch.Tensor, grad_norm) -> bool:
    flag = torch.tensor(
        [float(torch.isfinite(loss.detach()).all()) * float(torch.isfinite(torch.as_tensor(grad_norm)).all())],
        device=accelerator.device,
    )
    return bool(accelerator.gather(flag).min().item() == 1.0)


def after_update(config, output_dir: Path, step: int, finite: bool, loss: float, grad_norm, in_a_row: int, ema,
                 ema_model, learning_rate_key: str) -> int:  # fmt: skip
    """Once an optimizer step is complete: move the EMA towards `ema_model`'s new weights, or, for a step whose
    update was dropped (`guarded_step`), apply the non-finite policy (`handle_non_finite`). Returns how many steps in
    a row have now been non-finite."""
    if not finite:
        handle_non_finite(config, output_dir, step, loss, grad_norm, in_a_row + 1, learning_rate_key)
        return in_a_row + 1
    if ema is not None:
        ema.step(ema_model.parameters())
    return 0


def handle_non_finite(config, output_dir: Path, step: int, loss: float, grad_norm, in_a_row: int,
                      learning_rate_key: str) -> None:  # fmt: skip
    """A step whose loss or gradient was NaN/Inf (its update was not applied): stop per `non_finite_loss`, naming
    the step and the checkpoint that is kept, or log it and go on."""
    message = (
        f"Non-finite loss or gradient at step {step} (loss={loss:.4g}, grad_norm={float(grad_norm):.4g}); "
        f"the update was not applied."
    )
    if config.non_finite_loss == "stop" or in_a_row >= config.max_consecutive_non_finite:
        why = ("non_finite_loss=stop" if config.non_finite_loss == "stop" else
               f"{in_a_row} in a row, max_consecutive_non_finite={config.max_consecutive_non_finite}")  # fmt: skip
        last = ckpt.list_checkpoints(output_dir)
        kept = f"the last good checkpoint, {last[-1].name}, is untouched. " if last else "no checkpoint was written yet. "
        raise NonFiniteLossError(
            f"{message} Training stopped ({why}); {kept}Lower {learning_rate_key}, check the data of that step, or "
            f"set non_finite_loss=skip."
        )
    logger.warning(message + f" Skipping it ({in_a_row} in a row).")


def checkpoint_or_stop(accelerator, config, output_dir: Path, step: int, state: dict, ema, stop: StopSignal,
                       done: bool, progress, ema_folder: str, output_key: str) -> bool:  # fmt: skip
    """The end of every optimizer step: a periodic checkpoint every `checkpointing_steps`, and when a stop signal
    arrived on any rank (and this was not the last step anyway), a checkpoint and a clean stop. Returns True when
    the run must stop now (the caller then returns). All ranks call this."""
    stopping = stop.requested(accelerator)
    periodic = config.checkpointing_steps and step % config.checkpointing_steps == 0
    if periodic or (stopping and not done):
        ckpt.save_checkpoint(
            accelerator,
            output_dir,
            step,
            state,
            ema=sharded.full_ema(accelerator, ema),  # on the main process; gathered from the shards under FSDP
            limit=config.checkpoints_total_limit,
            ema_folder=ema_folder,
        )
    if stopping and not done:
        progress.close()
        accelerator.print(
            f"Stopped by signal at step {step}; checkpoint saved. Resume with: "
            f"resume_from_checkpoint=latest (same config and {output_key})."
        )
        accelerator.end_training()
        return True
    return False


class StopSignal:
    """SIGINT / SIGTERM ask the run to finish its current step, save a checkpoint and exit cleanly. `restore` (in a
    `finally`) puts the previous handlers back, so that Ctrl-C interrupts a Python session again once `main` has
    returned or raised."""

    def __init__(self):
        self.flag, self.previous = False, {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners): keep default handling
                pass

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.flag:  # second signal: stop now
            raise KeyboardInterrupt
        self.flag = True

    def requested(self, accelerator) -> bool:
        flag = torch.tensor([float(self.flag)], device=accelerator.device)
        return bool(accelerator.gather(flag).max().item() > 0)
