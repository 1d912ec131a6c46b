"""Image helpers shared by the sampling script, training's validation images and notebooks: grids and filmstrips."""

from __future__ import annotations

import math
from pathlib import Path

import PIL.Image


def make_grid(images: list[PIL.Image.Image], rows: int | None = None, padding: int = 2) -> PIL.Image.Image:
    """Tile equally sized images row by row into one image, `padding` white pixels between them.

    `rows` defaults to the most square layout (⌈√n⌉ columns); a single row makes a filmstrip.
    """
    if not images:
        raise ValueError("`images`: got an empty list; a grid needs at least one image.")
    width, height = images[0].size
    if any(image.size != (width, height) for image in images):
        raise ValueError(f"`images`: sizes {sorted({i.size for i in images})} differ; a grid needs one size.")
    if rows is None:
        cols = math.ceil(math.sqrt(len(images)))
        rows = math.ceil(len(images) / cols)
    else:
        if rows < 1:
            raise ValueError(f"`rows`: {rows} must be >= 1.")
        cols = math.ceil(len(images) / rows)
    grid = PIL.Image.new(
        "RGB", (cols * width + (cols - 1) * padding, rows * height + (rows - 1) * padding), color="white"
    )
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        grid.paste(image.convert("RGB"), (col * (width + padding), row * (height + padding)))
    return grid


def load_image(path: str | Path, mode: str = "RGB") -> PIL.Image.Image:
    """Open an image file fully (so the file handle is released) in `mode` ("RGB" for images, "L" for masks)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such image file: {path}")
    with PIL.Image.open(path) as image:
        return image.convert(mode)


def save_images(images: list[PIL.Image.Image], grid_path: str | Path, rows: int | None = None) -> list[Path]:
    """Write each image as `<stem>_<i>.png` next to `grid_path`, and their grid to `grid_path`; return the paths."""
    grid_path = Path(grid_path)
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        paths.append(grid_path.with_name(f"{grid_path.stem}_{index}.png"))
        image.save(paths[-1])
    make_grid(images, rows=rows).save(grid_path)
    return [grid_path, *paths]
