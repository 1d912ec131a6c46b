"""Sharded models (FSDP2 through accelerate, `configs/accelerate/fsdp.yaml`): what the diffusion stage does
differently when the UNet's parameters are DTensor shards spread over the processes.

    enable_fsdp_on_cpu  accelerate 1.15 turns on FSDP only for GPU-like devices (AcceleratorState.__init__ sets
                        DistributedType.FSDP in its MULTI_GPU/MULTI_NPU/... branch), while torch 2.13's FSDP2
                        `fully_shard` runs on CPU with gloo; so on a machine without GPUs a launch that asks for FSDP
                        gets accelerate's FSDP state set here, and then runs accelerate's own FSDP2 code (prepare,
                        save_state, load_state, get_state_dict), which is what the CPU tests exercise
    shard_ema           the EMA's shadow weights sharded like the UNet's (each process keeps its shard), so the EMA
                        costs no more memory per process than the weights do; `full_ema` gathers them for a
                        checkpoint, which stores the EMA in the usual unsharded folder
    unsharded           a forward of a sharded model is collective, so the main process cannot sample with it alone:
                        for validation, the judge and the final save every process gathers the (EMA) weights and the
                        main one gets plain, unsharded models, and the saved pipeline is the normal one
"""

from __future__ import annotations

import copy
import dataclasses
import os

import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedType

from .errors import UsageError

logger = get_logger(__name__)


def is_sharded(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def enable_fsdp_on_cpu(accelerator, config, script: str) -> None:
    """Give a CPU launch of `accelerate launch --config_file configs/accelerate/fsdp.yaml` (ACCELERATE_USE_FSDP set)
    the FSDP state accelerate gives GPU launches, and refuse what FSDP cannot run here."""
    wanted = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wanted and accelerator.distributed_type == DistributedType.MULTI_CPU:
        from accelerate.state import PartialState
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch sets
        if plugin.fsdp_version != 2:
            raise UsageError("FSDP on CPU needs fsdp_version: 2 (FSDP2's fully_shard) in the accelerate config.")
        accelerator.state.fsdp_plugin = plugin
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # both states' copies (see above)
    if not is_sharded(accelerator):
        return
    if script != "scripts/train.py":
        raise UsageError(f"FSDP shards the diffusion stage's UNet (configs/accelerate/fsdp.yaml wraps its blocks); "
                         f"run {script} with DDP (--multi_gpu) instead.")  # fmt: skip
    if config.train_text_encoder:
        raise UsageError("`train_text_encoder`: true under FSDP: configs/accelerate/fsdp.yaml wraps the UNet's "
                         "blocks, which the text encoder does not have; set train_text_encoder=false (a pretrained or "
                         "frozen text encoder), or train with DDP.")  # fmt: skip


def _shard_like(full: torch.Tensor, param) -> torch.Tensor:
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor) or isinstance(full, DTensor):
        return full
    return distribute_tensor(full.to(param.device, param.dtype), param.device_mesh, param.placements)


def shard_ema(accelerator, ema, model) -> None:
    """Shard `ema`'s shadow weights (full tensors: from the unsharded model, or a checkpoint) like `model`'s."""
    if ema is None or not is_sharded(accelerator):
        return
    params = list(model.parameters())
    ema.shadow_params = [_shard_like(shadow, param) for shadow, param in zip(ema.shadow_params, params)]


def full_ema(accelerator, ema):
    """The EMA for the main process to save: under FSDP a copy with every shadow weight gathered (all processes call
    this), elsewhere the EMA itself; None on the other processes."""
    from torch.distributed.tensor import DTensor

    if ema is None or not is_sharded(accelerator):
        return ema if accelerator.is_main_process else None
    gathered = [s.full_tensor() if isinstance(s, DTensor) else s for s in ema.shadow_params]
    if not accelerator.is_main_process:
        return None
    full = copy.copy(ema)
    full.shadow_params = gathered
    return full


def unsharded(accelerator, models):
    """`models` (validation.Models) with plain, unsharded copies of the sharded ones on the main process: all
    processes call this (gathering is collective); without FSDP, `models` as they are."""
    if not is_sharded(accelerator):
        return models
    unet = accelerator.unwrap_model(models.unet)
    state = accelerator.get_state_dict(models.unet)  # the full weights, on the main process
    ema = full_ema(accelerator, models.ema)
    if not accelerator.is_main_process:
        return models
    from torch.distributed.fsdp import FSDPModule

    # FSDP2 gives the model a class of its own, FSDP<Model>(FSDPModule, <Model>): the model's class is the first other
    model_class = next(c for c in type(unet).__mro__[1:] if not issubclass(c, FSDPModule))
    plain = model_class.from_config(unet.config)
    plain.load_state_dict(state)
    plain.to(accelerator.device).train(unet.training)
    return dataclasses.replace(models, unet=plain, ema=ema)


def full_norm(grad_norm):
    """A gradient norm as a plain tensor (FSDP2's is a replicated DTensor)."""
    from torch.distributed.tensor import DTensor

    return grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm
