"""What a training run shows a person: labelled image grids and the loss curve."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def save_image_grid(
    images: list[Image.Image], path: str | Path, captions: list[str] | None = None, columns: int | None = None
) -> Image.Image:
    """Tile `images` in a grid (with each caption under its image when given), save it as PNG and return it.
    Small images are upscaled (nearest) to at least 128 px so a 32 px sample stays legible."""
    if not images:
        raise ValueError("`images`: got none to put in a grid.")
    columns = columns or min(len(images), max(1, math.ceil(math.sqrt(len(images)))))
    rows = math.ceil(len(images) / columns)
    scale = max(1, math.ceil(128 / images[0].width))
    w, h = images[0].width * scale, images[0].height * scale
    font = ImageFont.load_default()
    label_lines = 3 if captions else 0
    label_h = 12 * label_lines
    grid = Image.new("RGB", (columns * w, rows * (h + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        x, y = (i % columns) * w, (i // columns) * (h + label_h)
        grid.paste(image.convert("RGB").resize((w, h), Image.NEAREST), (x, y))
        if captions:
            lines = textwrap.wrap(captions[i], width=max(8, w // 6))[:label_lines]
            for k, line in enumerate(lines):
                draw.text((x + 2, y + h + 12 * k), line, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid


def plot_loss(history: list[dict], path: str | Path, title: str = "training loss") -> None:
    """Loss per step (light) and its running mean over ~2% of the run (dark), log-scaled, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if steps:
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="per step")
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", linewidth=1.8, label=f"mean of {window}")
        if min(losses) > 0:
            ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
