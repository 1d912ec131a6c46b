"""The sampling schedulers sculpt's tools offer by name (`scripts/sample.py --scheduler`, the judges, the demo): one
table, name → class, each built `from_config` of the pipeline's own scheduler, as diffusers swaps schedulers.

The table holds class *names*, resolved only by `make_scheduler`, so that a command line can check `--scheduler`
against `SCHEDULERS` before torch is imported.
"""

from __future__ import annotations

from typing import Any

# name → (module, class). "ddpm" is ours (pipelines/scheduling_ddpm.py, Ho et al. 2020, Algorithm 2).
_CLASSES = {
    "ddpm": ("pipelines.scheduling_ddpm", "DDPMScheduler"),
    "ddim": ("diffusers", "DDIMScheduler"),
    "dpm": ("diffusers", "DPMSolverMultistepScheduler"),
    "euler": ("diffusers", "EulerDiscreteScheduler"),
}
SCHEDULERS = tuple(_CLASSES)


def make_scheduler(name: str, config: Any) -> Any:
    """Scheduler `name` (one of SCHEDULERS) built `from_config(config)`, e.g. from `pipe.scheduler.config`."""
    import importlib

    if name not in _CLASSES:
        raise ValueError(f"`scheduler`: {name!r} is not one of {list(SCHEDULERS)}.")
    module, class_name = _CLASSES[name]
    return getattr(importlib.import_module(module), class_name).from_config(config)
