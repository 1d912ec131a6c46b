"""Train the autoencoder (stage 1 of latent diffusion) and store the latent scaling factor it measured.

    accelerate launch scripts/train_vae.py --config configs/shapes.yaml [key=value ...] [--dry_run]
"""

import sys

from training.cli import run
from training.train_vae import main

if __name__ == "__main__":
    sys.exit(run(main, description=__doc__))
