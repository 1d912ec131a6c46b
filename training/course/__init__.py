"""The course's demos, beside the latent diffusion model: DDPM on 2-D points (toy2d.py: moons, swiss roll, S-curve),
with our DDPMScheduler."""
