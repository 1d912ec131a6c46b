"""sculpt inference: our DDPM scheduler and the latent diffusion pipelines built on diffusers."""

from .scheduling_ddpm import DDPMScheduler, DDPMSchedulerOutput

__all__ = ["DDPMScheduler", "DDPMSchedulerOutput"]
