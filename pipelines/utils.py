"""Image helpers shared by the sampling script, training's validation images and notebooks: grids (with captions)
and filmstrips."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont


def make_grid(
    images: list[PIL.Image.Image],
    rows: int | None = None,
    padding: int = 2,
    columns: int | None = None,
    captions: list[str] | None = None,
    min_side: int = 0,
) -> PIL.Image.Image:
    """Tile equally sized images row by row into one image, `padding` white pixels between them.

    The layout is `rows` or `columns` (give at most one), by default the most square one (⌈√n⌉ columns); a single
    row makes a filmstrip. Images smaller than `min_side` are upscaled (nearest, so their pixels stay visible) to at
    least that; `captions` (one per image) are written under each image, up to three wrapped lines.
    """
    if not images:
        raise ValueError("`images`: got an empty list; a grid needs at least one image.")
    width, height = images[0].size
    if any(image.size != (width, height) for image in images):
        raise ValueError(f"`images`: sizes {sorted({i.size for i in images})} differ; a grid needs one size.")
    if rows is not None and columns is not None:
        raise ValueError(f"`rows`: {rows} and `columns`: {columns} both given; give one of them.")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"`captions`: {len(captions)} captions for {len(images)} images; give one per image.")
    for name, value in (("rows", rows), ("columns", columns)):
        if value is not None and value < 1:
            raise ValueError(f"`{name}`: {value} must be >= 1.")
    if rows is not None:
        cols = math.ceil(len(images) / rows)
    else:
        cols = columns or math.ceil(math.sqrt(len(images)))
        cols = min(cols, len(images))
        rows = math.ceil(len(images) / cols)
    scale = max(1, math.ceil(min_side / width)) if min_side else 1
    cell_w, cell_h = width * scale, height * scale
    label_lines, line_h = (3, 12) if captions else (0, 0)
    font = PIL.ImageFont.load_default() if captions else None
    grid = PIL.Image.new(
        "RGB",
        (cols * cell_w + (cols - 1) * padding, rows * (cell_h + label_lines * line_h) + (rows - 1) * padding),
        color="white",
    )
    draw = PIL.ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        x, y = col * (cell_w + padding), row * (cell_h + label_lines * line_h + padding)
        image = image.convert("RGB")
        grid.paste(image.resize((cell_w, cell_h), PIL.Image.NEAREST) if scale > 1 else image, (x, y))
        if captions:
            for k, line in enumerate(textwrap.wrap(captions[index], width=max(8, cell_w // 6))[:label_lines]):
                draw.text((x + 2, y + cell_h + line_h * k), line, fill="black", font=font)
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
