"""sculpt inference: our DDPM scheduler and the latent diffusion pipelines built on diffusers.

The classes load on first use (PEP 562), so that the torch-free modules (`pipelines.loading`,
`pipelines.schedulers`) can be imported by command lines that check their arguments before importing torch.

Rules for editing pipelines/ (a saved model folder ships this code, see portable.py; tests/test_portable_rules.py
checks each rule and names the module that breaks it):
  1. Modules here import each other only as `from .module import name`: `save_pretrained` inlines those into one
     shipped file, and diffusers downloads only that file from a Hub repo. No `from . import x`, no
     `import pipelines.x` / `from pipelines.x import y`, no relative import inside a function, no import cycles.
  2. A top-level name (function, class, constant) bound in two modules that one pipeline module pulls in must be
     bound identically in both: once inlined they share one namespace.
  3. Nothing here imports `training` (inference never depends on training), and the shipped modules import only
     what a machine without sculpt has: the standard library, torch, numpy, PIL, diffusers, transformers,
     huggingface_hub.
"""

import importlib

_EXPORTS = {
    "DDPMScheduler": "scheduling_ddpm",
    "DDPMSchedulerOutput": "scheduling_ddpm",
    "LatentDiffusionPipeline": "pipeline_latent_diffusion",
    "LatentDiffusionImg2ImgPipeline": "pipeline_latent_diffusion_img2img",
    "LatentDiffusionInpaintPipeline": "pipeline_latent_diffusion_inpaint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
