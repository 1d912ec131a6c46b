"""The sampling schedulers sculpt's tools offer by name (`scripts/sample.py --scheduler`, the judges, the browser
demo): one table, name → class, each built `from_config` of the pipeline's own scheduler, as diffusers swaps them.

The table holds module and class *names*, resolved only by `make_scheduler`, so that a command line can check
`--scheduler` against `SCHEDULERS` before torch is imported, and so that the demo's shipped copy (which inlines
this file) lists the diffusers ones without needing sculpt: `DIFFUSERS_SCHEDULERS`.
"""

from __future__ import annotations

import importlib
from typing import Any

# name → (label, module, class, config overrides). "ddpm" is ours (pipelines/scheduling_ddpm.py, Ho et al. 2020,
# Algorithm 2); the others are diffusers' few-step samplers.
SCHEDULER_TABLE: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "ddpm": ("DDPM (sculpt's, Ho et al. 2020)", "pipelines.scheduling_ddpm", "DDPMScheduler", {}),
    # The same chain with Ho et al.'s other variance, σ_t² = β_t instead of the posterior's β̃_t (Sec. 3.2).
    "ddpm-large": ("DDPM, σ² = β", "pipelines.scheduling_ddpm", "DDPMScheduler", {"variance_type": "fixed_large"}),
    "ddim": ("DDIM", "diffusers", "DDIMScheduler", {}),
    "dpm": ("DPM-Solver++ 2M", "diffusers", "DPMSolverMultistepScheduler", {}),
    "dpm-karras": ("DPM-Solver++ 2M Karras", "diffusers", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "euler": ("Euler", "diffusers", "EulerDiscreteScheduler", {}),
    "euler-ancestral": ("Euler ancestral", "diffusers", "EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPC", "diffusers", "UniPCMultistepScheduler", {}),
}
SCHEDULERS = tuple(SCHEDULER_TABLE)
DIFFUSERS_SCHEDULERS = tuple(name for name, entry in SCHEDULER_TABLE.items() if entry[1] == "diffusers")


def make_scheduler(name: str, config: Any) -> Any:
    """Scheduler `name` (one of SCHEDULERS) built `from_config(config)`, e.g. from `pipe.scheduler.config`."""
    if name not in SCHEDULER_TABLE:
        raise ValueError(f"`scheduler`: {name!r} is not one of {list(SCHEDULERS)}.")
    _, module, class_name, overrides = SCHEDULER_TABLE[name]
    return getattr(importlib.import_module(module), class_name).from_config(config, **overrides)
