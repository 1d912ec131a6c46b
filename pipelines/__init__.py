"""sculpt inference: our DDPM scheduler and the latent diffusion pipelines built on diffusers."""

from .pipeline_latent_diffusion import LatentDiffusionPipeline
from .pipeline_latent_diffusion_img2img import LatentDiffusionImg2ImgPipeline
from .pipeline_latent_diffusion_inpaint import LatentDiffusionInpaintPipeline
from .scheduling_ddpm import DDPMScheduler, DDPMSchedulerOutput

__all__ = [
    "DDPMScheduler",
    "DDPMSchedulerOutput",
    "LatentDiffusionImg2ImgPipeline",
    "LatentDiffusionInpaintPipeline",
    "LatentDiffusionPipeline",
]
