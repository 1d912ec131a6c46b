"""Train a text-to-image latent diffusion model.

    accelerate launch scripts/train.py --config configs/shapes.yaml [key=value ...] [--dry_run]
"""

import sys

from training.cli import run
from training.train import main

if __name__ == "__main__":
    sys.exit(run(main, description=__doc__))
