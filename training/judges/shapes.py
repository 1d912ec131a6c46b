"""The shapes judge: how well a text-to-image model trained on the built-in shapes dataset draws what it is told.

Every caption of the shapes grammar (`training.builtin.shapes`: 2 sizes x 6 colours x 3 shapes x 3 backgrounds = 108) is
generated `per_caption` times at each guidance scale, and the four attributes are read back off the pixels, with no
learned classifier:

    background   the palette entry nearest to the median of the image border
    shape pixels those far from the background colour, cleaned to one solid blob (largest connected component,
                 holes filled, outline smoothed by a majority vote), cut at the 50% contour between the background
                 and the shape colour
    colour       the palette entry nearest to the median of the blob's most saturated quarter
    shape        how much of its bounding box the blob fills, in its top and bottom halves: square 1 and 1, circle
                 π/4 and π/4, an apex-up triangle 1/4 and 3/4 (1/2 in all)
    size         its extent as a fraction of the image width: small 0.25–0.40, large 0.55–0.75

Every threshold comes from the palette's or the grammar's geometry (see the constants); the reader is meant to work
on blurred, noisy, slightly off-colour generated images, not only on the dataset's exact pixels.

The reader is first proved on images drawn by the dataset itself (`check_reader`), and the scores are per attribute
and for all four at once. A colour outside the base grammar (`NEW_COLORS`, e.g. orange, for the adapters of
docs/lora.md) is judged the same way: `colors` picks the captions' colours, and the reader chooses among the base six
plus those (or an explicit `palette`), so a model that paints red shapes orange is caught, not read as red. A
background outside it (`NEW_BACKGROUNDS`, yellow) likewise: `backgrounds` picks the captions' backgrounds, and the
reader chooses the background among the base three plus those. `evaluate_pipeline` returns the metrics dict (the training loop can call it at validation
time with an in-memory pipeline); `run_evaluation` also keeps the images and readings, which `write_report` turns
into eval.json, an accuracy-vs-guidance plot and labelled grids.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from diffusers.utils import logging
from PIL import Image

from pipelines.schedulers import SCHEDULERS

from ..builtin.shapes import (
    ALL_BACKGROUNDS,
    ALL_COLORS,
    BACKGROUNDS,
    CAPTION_TEMPLATE,
    COLORS,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    check_backgrounds,
    check_colors,
    make_shapes_sample,
)
from .report import (
    RIGHT,
    WRONG,
    as_rgb_array,
    best_guidance_scale,
    check_guidance_scales,
    generate_per_scale,
    guidance_key,
    plot_accuracy,
    square_resolution,
    vae_round_trip,
    write_eval_json,
)

logger = logging.get_logger(__name__)  # diffusers' logger: works without an accelerate state (scripts, notebooks)

ATTRIBUTES = ("size", "color", "shape", "background")
READER_TARGET = 0.99  # below this on the dataset's own images, the judge's scores would not mean much

# ---- thresholds, from the palette and the grammar's geometry ---------------------------------------------------------
_PALETTE_SHAPE = np.array(list(COLORS.values()), dtype=np.float64)
_PALETTE_BACKGROUND = np.array(list(BACKGROUNDS.values()), dtype=np.float64)
# The closest a shape colour comes to a background colour (purple on gray, ≈ 101 in RGB units). A pixel further from
# the background than half of it is more shape than background even for that pair, and a blurred edge crosses it near
# its middle; noise and colour drift of up to that half still leave the two apart.
MIN_CONTRAST = float(np.linalg.norm(_PALETTE_SHAPE[:, None] - _PALETTE_BACKGROUND[None], axis=-1).min())
CANDIDATE_THRESHOLD = MIN_CONTRAST / 2
# How much of its bounding box a shape fills: an apex-up triangle 1/4 of the top half and 3/4 of the bottom half, a
# circle π/4 of each, a square all of each. The total fill alone (1/2, π/4, 1) confuses small blurred triangles with
# circles: blur rounds their corners and fades the apex first, pushing the total from 1/2 to 0.71 (32 px, Gaussian
# blur σ = 1 px). But a triangle is the one shape whose top half is emptier than its bottom half: ratio 1/3 against 1.
# Halfway would be 2/3; the same blur and noise move triangles up to 0.71 (99% ≤ 0.64) and the symmetric shapes to
# 1 ± 0.2 (≥ 0.81), so the cut sits at 3/4, in that measured gap. Then square against circle by the total fill, for
# the same reason not halfway between π/4 and 1 (0.89): blur rounds a square's corners (fill down to 0.88 at σ = 1 px)
# but leaves a disc a disc (≤ 0.82), so the cut sits at 0.85, in that gap.
TRIANGLE_MAX_HALF_RATIO = 0.75
SQUARE_MIN_FILL = 0.85
# Extent as a fraction of the width: small ≤ 0.40 < LARGE_MIN_EXTENT < 0.55 ≤ large, the middle of the gap.
LARGE_MIN_EXTENT = (SIZE_RANGES["small"][1] + SIZE_RANGES["large"][0]) / 2  # 0.475
MIN_VOTE_EXTENT = 8  # pixels: the smallest shape must span this many for the outline's majority vote (from 32 px up)
# The smallest shape, a small triangle, covers (0.25 w)² / 2 = w² / 32 pixels; a blob under half of that is noise.
MIN_SHAPE_AREA = SIZE_RANGES["small"][0] ** 2 / 2 / 2  # as a fraction of the image's pixels


@dataclass(frozen=True)
class ShapeReading:
    """The attributes read off one image; size, colour and shape are None when no shape was found.

    `fill` (the fraction of the top and of the bottom half of its bounding box that the shape covers) and `extent`
    (the box's larger side / image width) are what shape and size were decided from, kept for diagnosis.
    """

    background: str
    size: str | None = None
    color: str | None = None
    shape: str | None = None
    fill: tuple[float, float] | None = None
    extent: float | None = None

    def matches(self, expected: dict[str, str]) -> dict[str, bool]:
        """Per attribute, whether it was read as `expected[attribute]`; a missing shape is wrong on all three."""
        return {attribute: getattr(self, attribute) == expected[attribute] for attribute in ATTRIBUTES}


def _nearest(palette: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> str:
    names = list(palette)
    distances = np.linalg.norm(np.array([palette[n] for n in names], dtype=np.float64) - rgb, axis=-1)
    return names[int(distances.argmin())]


def _label(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean mask: an int array, 0 off the mask, and on it the 1-based flat index of the
    component's first pixel. Min-label propagation with pointer jumping, numpy only (the images are small)."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    unset = mask.size + 1
    while True:
        padded = np.pad(np.where(mask, labels, unset), 1, constant_values=unset)
        smallest = np.minimum.reduce(
            [padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        )
        smallest = np.where(mask, smallest, 0)
        # Pointer jumping: a label is the index of a pixel of the same component, so take that pixel's label too.
        smallest = np.where(mask, smallest.ravel()[np.maximum(smallest, 1) - 1].reshape(mask.shape), 0)
        if np.array_equal(smallest, labels):
            return labels
        labels = smallest


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels = _label(mask)
    if not mask.any():
        return mask
    counts = np.bincount(labels[mask])
    return labels == counts.argmax()


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Add to `mask` every off-mask region that does not reach the image border (the shapes are convex, so a hole is
    a dark speck of decoder noise inside the shape, and must not lower its fill)."""
    outside = _label(~mask)
    border = np.unique(np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]]))
    return mask | ((outside > 0) & ~np.isin(outside, border))


def _majority_3x3(mask: np.ndarray) -> np.ndarray:
    """Each pixel set where at least 5 of the 9 in its 3x3 neighbourhood are (the border repeated outwards)."""
    padded = np.pad(mask, 1, mode="edge").astype(np.int8)
    height, width = mask.shape
    votes = sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
    return votes >= 5


def reader_palette(colors: Sequence[str] | None = None, palette: Sequence[str] | None = None) -> dict[str, tuple]:
    """The colours the reader chooses among: `palette` (names of ALL_COLORS) when given, else the base six plus the
    captions' `colors`."""
    names = check_colors(palette, "palette") if palette is not None else tuple(dict.fromkeys(
        [*COLORS, *check_colors(colors)]))  # fmt: skip
    return {name: ALL_COLORS[name] for name in names}


def reader_backgrounds(backgrounds: Sequence[str] | None = None, palette: Sequence[str] | None = None
                       ) -> dict[str, tuple]:  # fmt: skip
    """The backgrounds the reader chooses among: `palette` (names of ALL_BACKGROUNDS) when given, else the base three
    plus the captions' `backgrounds`."""
    if palette is not None:
        names = check_backgrounds(palette, ALL_COLORS, "background_palette")
    else:
        names = tuple(dict.fromkeys([*BACKGROUNDS, *check_backgrounds(backgrounds, ALL_COLORS)]))
    return {name: ALL_BACKGROUNDS[name] for name in names}


def read_shape(image: Image.Image | np.ndarray, palette: dict[str, tuple] | None = None,
               backgrounds: dict[str, tuple] | None = None) -> ShapeReading:  # fmt: skip
    """Read background, size, colour and shape off one image (see the module docstring for the steps); the colour
    is the nearest of `palette` ({name: RGB}, default the base six), the background the nearest of `backgrounds`
    (default the base three)."""
    pixels = as_rgb_array(image, allow_gray=False)  # the shapes are told apart by colour
    height, width = pixels.shape[:2]

    # 1. Background: a large shape in a corner covers at most ~3/8 of the border, so the border median is background;
    # a second median over the border pixels near it drops the shape's pull on that statistic.
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    background_rgb = np.median(border, axis=0)
    near = np.linalg.norm(border - background_rgb, axis=-1) <= CANDIDATE_THRESHOLD
    if near.any():
        background_rgb = np.median(border[near], axis=0)
    background = _nearest(backgrounds or BACKGROUNDS, background_rgb)

    # 2. Candidate shape pixels, cleaned to the one largest blob: decoder speckles are small blobs of their own.
    distance = np.linalg.norm(pixels - background_rgb, axis=-1)
    blob = _largest_component(distance > CANDIDATE_THRESHOLD)
    if blob.sum() < MIN_SHAPE_AREA * height * width:
        return ShapeReading(background=background)

    # 3. Colour from the quarter of the blob furthest from the background: blur mixes a small shape's every pixel with
    # the background, its most saturated ones least (noise biases them outwards a little, far less than the palette's
    # smallest colour gap of ≈ 113 / 2).
    far = distance[blob] >= np.quantile(distance[blob], 0.75)
    shape_rgb = np.median(pixels[blob][far], axis=0)
    color = _nearest(palette or COLORS, shape_rgb)

    # 4. The blob again, now cut at the 50% contour between the two measured colours: a symmetric blur moves that
    # contour least, so extent and fill stay near their sharp values whatever the pair's contrast.
    direction = shape_rgb - background_rgb
    if np.linalg.norm(direction) < CANDIDATE_THRESHOLD:  # the "blob" is noise on both sides of the background
        return ShapeReading(background=background)
    mix = (pixels - background_rgb) @ direction / (direction @ direction)  # 0 background, 1 shape colour
    # A 3x3 majority vote where the shapes are big enough to afford it: pixel noise makes the outline ragged, and one
    # stray pixel widens the bounding box and lowers the fill. The vote costs a sharp square its four corner pixels,
    # 4/64 of its fill at 8 px, but more of smaller ones, and it cuts small circles and apexes square.
    blob = mix > 0.5
    if SIZE_RANGES["small"][0] * width >= MIN_VOTE_EXTENT:
        blob = _majority_3x3(blob)
    blob = _fill_holes(_largest_component(blob))
    if blob.sum() < MIN_SHAPE_AREA * height * width:
        return ShapeReading(background=background)

    # 5. Shape from how much of its bounding box it fills, per half; size from the box's larger side (blur shortens a
    # triangle's apex more than its base).
    rows, cols = np.nonzero(blob)
    box = blob[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    half = box.shape[0] // 2
    fill = (float(box[:half].mean()), float(box[-half:].mean())) if half else (float(box.mean()),) * 2
    if fill[0] < TRIANGLE_MAX_HALF_RATIO * fill[1]:
        shape = "triangle"
    else:
        shape = "square" if box.mean() >= SQUARE_MIN_FILL else "circle"
    extent = float(max(box.shape) / width)
    size = "large" if extent >= LARGE_MIN_EXTENT else "small"
    return ShapeReading(background=background, size=size, color=color, shape=shape, fill=fill, extent=extent)


# ---- the captions, and scoring readings against them -----------------------------------------------------------------


def shapes_captions(colors: Sequence[str] | None = None, backgrounds: Sequence[str] | None = None
                    ) -> list[dict[str, str]]:  # fmt: skip
    """Every caption of the shapes grammar with its attributes, {"text", "size", "color", "shape", "background"}, in
    a fixed order: sizes, then colours, shapes and backgrounds (the last varying fastest); 108 of them, or 18 per
    colour of `colors` (None → the base six) on `backgrounds` (None → the base three), never a shape in its
    background's colour (30 captions on yellow alone)."""
    captions = []
    colors = check_colors(colors)
    for values in itertools.product(SIZES, colors, SHAPES, check_backgrounds(backgrounds, colors)):
        attributes = dict(zip(ATTRIBUTES, values))
        if attributes["color"] == attributes["background"]:
            continue
        captions.append({"text": CAPTION_TEMPLATE.format(**attributes), **attributes})
    return captions


def score(readings: Sequence[ShapeReading], expected: Sequence[dict[str, str]]) -> dict[str, float]:
    """The fraction of images read as expected, per attribute and for all four at once ("all")."""
    if not readings or len(readings) != len(expected):
        raise ValueError(f"`readings`: {len(readings)} readings for {len(expected)} expected captions; need ≥ 1 each.")
    right = np.array([[r.matches(e)[a] for a in ATTRIBUTES] for r, e in zip(readings, expected)])
    return {**{a: float(right[:, i].mean()) for i, a in enumerate(ATTRIBUTES)}, "all": float(right.all(axis=1).mean())}


def check_reader(resolution: int, num_images: int = 1000, seed: int = 1, colors: Sequence[str] | None = None,
                 palette: Sequence[str] | None = None, backgrounds: Sequence[str] | None = None,
                 background_palette: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The reader's accuracy on `num_images` images drawn by the dataset itself (`make_shapes_sample`, indices
    0..num_images-1, each with its own generator from (seed, index)) at `resolution`, in `colors` and read with
    `reader_palette(colors, palette)`, on `backgrounds` read among `reader_backgrounds(backgrounds,
    background_palette)`: it must be
    ≥ READER_TARGET for the judge's scores to mean anything. {"resolution", "num_images", "seed", "accuracy":
    score(...)} (and "colors", "palette" when not the base six; "backgrounds" when not the base three)."""
    if num_images < 1:
        raise ValueError(f"`num_images`: {num_images} must be ≥ 1.")
    names = tuple(reader_palette(colors, palette))
    colors = check_colors(colors)
    backgrounds = check_backgrounds(backgrounds, colors)
    reads = tuple(reader_backgrounds(backgrounds, background_palette))
    return copy.deepcopy(_check_reader(resolution, num_images, seed, colors, names, backgrounds, reads))


@functools.lru_cache(maxsize=8)  # the training loop evaluates at one resolution many times
def _check_reader(resolution: int, num_images: int, seed: int, colors: tuple, names: tuple,
                  backgrounds: tuple, reads: tuple) -> dict[str, Any]:  # fmt: skip
    samples = [make_shapes_sample(index, resolution, seed, colors, backgrounds) for index in range(num_images)]
    palette, background_palette = reader_palette(palette=names), reader_backgrounds(palette=reads)
    accuracy = score([read_shape(image, palette, background_palette) for image, _ in samples],
                     [attributes for _, attributes in samples])  # fmt: skip
    return {"resolution": resolution, "num_images": num_images, "seed": seed, "accuracy": accuracy,
            **_palette_entry(colors, names, backgrounds, reads)}  # fmt: skip


def _palette_entry(colors: tuple, names: tuple, backgrounds: tuple = tuple(BACKGROUNDS),
                   reads: tuple = tuple(BACKGROUNDS)) -> dict[str, list[str]]:  # fmt: skip
    """{"colors", "palette"} for a record, when they are not the base grammar's (older records had neither), and
    {"backgrounds", "background_palette"} likewise."""
    entry = {} if colors == names == tuple(COLORS) else {"colors": list(colors), "palette": list(names)}
    if backgrounds == reads == tuple(BACKGROUNDS):
        return entry
    return {**entry, "backgrounds": list(backgrounds), "background_palette": list(reads)}


def check_autoencoder(pipeline, num_images: int = 216, seed: int = 1, colors: Sequence[str] | None = None,
                      palette: Sequence[str] | None = None, backgrounds: Sequence[str] | None = None,
                      background_palette: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The reader's accuracy on `num_images` dataset images (in `colors`) after a round trip through the pipeline's
    VAE (encode, take the posterior mode, decode): the most a model can score with this decoder, however good its
    UNet. A low ceiling says the autoencoder, not the diffusion model, loses the attribute. Same dict as
    `check_reader`."""
    if num_images < 1:
        raise ValueError(f"`num_images`: {num_images} must be ≥ 1.")
    resolution = pipeline.default_height_width()[1]
    colors, names = check_colors(colors), tuple(reader_palette(colors, palette))
    backgrounds = check_backgrounds(backgrounds, colors)
    reads = reader_backgrounds(backgrounds, background_palette)
    samples = [make_shapes_sample(index, resolution, seed, colors, backgrounds) for index in range(num_images)]
    decoded = vae_round_trip(pipeline, [image for image, _ in samples], batch_size=108)
    color_palette = reader_palette(palette=names)
    readings = [read_shape(image, color_palette, reads) for image in decoded]
    accuracy = score(readings, [attributes for _, attributes in samples])
    return {"resolution": resolution, "num_images": num_images, "seed": seed, "accuracy": accuracy,
            **_palette_entry(colors, names, backgrounds, tuple(reads))}  # fmt: skip


# ---- generating and judging ------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """What `run_evaluation` returns: the metrics, and per guidance scale the images and their readings, in the order
    of `expected` (each caption of `shapes_captions()` `per_caption` times in a row)."""

    metrics: dict[str, Any]
    expected: list[dict[str, str]]
    images: dict[float, list[Image.Image]] = field(default_factory=dict)
    readings: dict[float, list[ShapeReading]] = field(default_factory=dict)


def _check_arguments(
    guidance_scales, per_caption, num_inference_steps, scheduler, seed, batch_size, reader_images
) -> list[float]:
    scales = check_guidance_scales(guidance_scales)
    integers = {"per_caption": (per_caption, 1), "num_inference_steps": (num_inference_steps, 1), "seed": (seed, 0),
                "batch_size": (batch_size, 1), "reader_images": (reader_images, 1)}  # fmt: skip
    for name, (value, low) in integers.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"`{name}`: {value!r} must be an integer ≥ {low}.")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"`scheduler`: {scheduler!r} is not one of {list(SCHEDULERS)} (or None: the pipeline's own).")
    return scales


def run_evaluation(
    pipeline,
    guidance_scales: Sequence[float] = (1.0, 2.0, 3.0, 5.0),
    per_caption: int = 1,
    num_inference_steps: int = 50,
    scheduler: str | None = None,
    seed: int = 0,
    batch_size: int = 108,
    reader_images: int = 1000,
    progress: bool = True,
    strict: bool = False,
    colors: Sequence[str] | None = None,
    palette: Sequence[str] | None = None,
    call_kwargs: dict[str, Any] | None = None,
    backgrounds: Sequence[str] | None = None,
    background_palette: Sequence[str] | None = None,
) -> Evaluation:
    """Generate every caption `per_caption` times at each guidance scale with `pipeline` (a `LatentDiffusionPipeline`
    at its training resolution), read the images and score them. See `evaluate_pipeline` for the arguments.

    Image i of the caption list uses the generator seeded `seed + i` at every guidance scale: the scales are compared
    on the same starting noise, and an image does not depend on `batch_size`. `scheduler` replaces the pipeline's for
    the run only; the pipeline's own progress bar is off meanwhile (one bar here counts all denoising steps).
    The autoencoder's ceiling (`check_autoencoder`) is measured too. `strict` makes a reader below READER_TARGET on
    the dataset's own images at this resolution a ValueError, raised before any image is generated, rather than a
    logged warning.
    """
    scales = _check_arguments(
        guidance_scales, per_caption, num_inference_steps, scheduler, seed, batch_size, reader_images
    )
    colors, names = check_colors(colors), tuple(reader_palette(colors, palette))
    backgrounds = check_backgrounds(backgrounds, colors)
    reads = tuple(reader_backgrounds(backgrounds, background_palette))
    if call_kwargs is not None and not isinstance(call_kwargs, dict):
        raise ValueError(f"`call_kwargs`: {call_kwargs!r} must be a dict of pipeline arguments.")
    width = square_resolution(pipeline, "shapes")
    start = time.perf_counter()
    reader = check_reader(width, reader_images, colors=colors, palette=names, backgrounds=backgrounds,
                          background_palette=reads)
    if reader["accuracy"]["all"] < READER_TARGET:
        message = (
            f"At {width} px the reader gets only {reader['accuracy']['all']:.1%} of {reader_images} dataset images "
            f"right (the judge needs {READER_TARGET:.0%}), so its scores of this model would mean little."
        )
        if strict:
            raise ValueError(f"`pipeline`: {message}")
        logger.warning(message)

    autoencoder = check_autoencoder(pipeline, colors=colors, palette=names, backgrounds=backgrounds,
                                    background_palette=reads)

    captions = shapes_captions(colors, backgrounds)
    expected = [caption for caption in captions for _ in range(per_caption)]
    prompts = [caption["text"] for caption in expected]
    generation_start = time.perf_counter()
    images, scheduler_name = generate_per_scale(
        pipeline, prompts, scales, num_inference_steps, seed, batch_size, scheduler, progress, **(call_kwargs or {})
    )
    generation_seconds = time.perf_counter() - generation_start
    evaluation = Evaluation(metrics={}, expected=expected, images=images)
    accuracy = {}
    color_palette, background_reads = reader_palette(palette=names), reader_backgrounds(palette=reads)
    for scale in scales:
        evaluation.readings[scale] = [read_shape(image, color_palette, background_reads) for image in images[scale]]
        accuracy[guidance_key(scale)] = score(evaluation.readings[scale], expected)

    best = best_guidance_scale(scales, accuracy, key="all")
    evaluation.metrics = {
        "accuracy": accuracy,
        "best_guidance_scale": best,
        "best_accuracy": accuracy[guidance_key(best)],
        "reader": reader,
        "autoencoder": autoencoder,
        "settings": {
            "guidance_scales": scales,
            "per_caption": per_caption,
            "num_inference_steps": num_inference_steps,
            "scheduler": scheduler_name,
            "seed": seed,
            "batch_size": batch_size,
            "resolution": width,
            "num_captions": len(captions),
            "num_images": len(prompts) * len(scales),
            **_palette_entry(colors, names, backgrounds, reads),
            **({"call_kwargs": {k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, dict))}}
               if call_kwargs else {}),
        },
        "seconds": round(time.perf_counter() - start, 2),
        "seconds_per_image": round(generation_seconds / (len(prompts) * len(scales)), 4),  # generation alone
    }
    return evaluation


def evaluate_pipeline(
    pipeline,
    guidance_scales: Sequence[float] = (1.0, 2.0, 3.0, 5.0),
    per_caption: int = 1,
    num_inference_steps: int = 50,
    scheduler: str | None = None,
    seed: int = 0,
    batch_size: int = 108,
    reader_images: int = 1000,
    progress: bool = True,
    strict: bool = False,
    colors: Sequence[str] | None = None,
    palette: Sequence[str] | None = None,
    call_kwargs: dict[str, Any] | None = None,
    backgrounds: Sequence[str] | None = None,
    background_palette: Sequence[str] | None = None,
) -> dict[str, Any]:
    """How well `pipeline` draws what it is told: the metrics dict that eval.json holds.

    Args:
        pipeline: a `LatentDiffusionPipeline` trained on the shapes grammar (models in eval mode), used at its
            training resolution.
        guidance_scales: classifier-free guidance scales to compare; ≤ 1 turns guidance off.
        per_caption: images per caption (108 captions).
        num_inference_steps: denoising steps per image.
        scheduler: one of SCHEDULERS to use instead of the pipeline's own, which is put back afterwards.
        seed: image i is drawn from the generator seeded `seed + i`.
        batch_size: prompts per pipeline call (the UNet sees twice as many under guidance); larger is faster on CPU
            until memory runs short.
        reader_images: dataset images the reader is checked on first (cached per resolution).
        progress: show a tqdm bar over all denoising steps.
        strict: raise (rather than log a warning) if the reader is below READER_TARGET on the dataset's own images at
            the pipeline's resolution; its accuracy there is in the metrics either way.
        colors: the captions' colours (names of `training.builtin.shapes.ALL_COLORS`; None → the base six, 108
            captions), e.g. ("orange",) for the 18 captions of a concept an adapter was taught.
        palette: the colours the reader chooses among; None → the base six plus `colors`.
        call_kwargs: more arguments for every pipeline call, e.g. {"cross_attention_kwargs": {"scale": 0.5}} (a
            LoRA's strength).
        backgrounds: the captions' backgrounds (names of `training.builtin.shapes.ALL_BACKGROUNDS`; None → the base
            three), e.g. ("yellow",) for the 30 captions of a new background; the reader chooses the background among
            the base three plus these.
        background_palette: the backgrounds the reader chooses among; None → the base three plus `backgrounds`.

    Returns:
        {"accuracy": {"<scale>": {"size", "color", "shape", "background", "all"}}, "best_guidance_scale",
        "best_accuracy", "reader": {"resolution", "num_images", "seed", "accuracy"} (on the dataset's own images),
        "autoencoder": {same keys} (on their VAE round trips: the ceiling), "settings": {...}, "seconds"};
        accuracies are fractions in [0, 1], "all" is all four attributes right at once.
    """
    return run_evaluation(
        pipeline, guidance_scales, per_caption, num_inference_steps, scheduler, seed, batch_size, reader_images,
        progress, strict, colors, palette, call_kwargs, backgrounds, background_palette,
    ).metrics  # fmt: skip


# ---- eval.json, the accuracy plot and the labelled grids -------------------------------------------------------------
_SHORT = {"small": "S", "large": "L", "circle": "circ", "square": "sq", "triangle": "tri", "white": "wht",
          "black": "blk", "gray": "gry", "green": "grn", "yellow": "yel", "purple": "pur", "cyan": "cyn",
          "orange": "orn"}  # fmt: skip


def write_report(evaluation: Evaluation, output_dir: str | Path, model: str | None = None) -> list[Path]:
    """Write eval.json (the metrics, plus `model` and the files written), eval_accuracy.png (accuracy against guidance
    scale) and eval_grid_g<scale>.png per guidance scale into `output_dir`; return their paths.

    eval.json is written last, through a temporary file and a rename, so a reader never sees a half-written one."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "eval_accuracy.png"]
    plot_shapes_accuracy(evaluation.metrics, paths[0], title=f"shapes judge: {model}" if model else "shapes judge")
    for scale, images in evaluation.images.items():
        paths.append(output_dir / f"eval_grid_g{guidance_key(scale)}.png")
        settings = evaluation.metrics["settings"]
        title = (f"guidance {guidance_key(scale)}, {settings['num_inference_steps']} steps "
                 f"{settings['scheduler']}, seed {settings['seed']}" + (f": {model}" if model else ""))  # fmt: skip
        labelled_grid(images, evaluation.readings[scale], evaluation.expected, title).save(paths[-1])
    return [write_eval_json(evaluation.metrics, output_dir, paths, model), *paths]


def plot_shapes_accuracy(metrics: dict[str, Any], path: str | Path, title: str = "shapes judge") -> None:
    """Accuracy against guidance scale: one line per attribute, a thick one for all four at once; PNG."""
    settings, reader, best = metrics["settings"], metrics["reader"], metrics["best_guidance_scale"]
    subtitle = (f"{settings['num_captions']} captions x {settings['per_caption']}, "
                f"{settings['num_inference_steps']} steps {settings['scheduler']}; best guidance {best:g}; "
                f"reader on data {reader['accuracy']['all']:.1%}")  # fmt: skip
    scales = settings["guidance_scales"]
    accuracy = [metrics["accuracy"][guidance_key(g)] for g in scales]
    series = {name: [a[key] for a in accuracy] for name, key in [*zip(ATTRIBUTES, ATTRIBUTES), ("all four", "all")]}
    ceilings = {"all four after the VAE alone": metrics["autoencoder"]["accuracy"]["all"]} if "autoencoder" in metrics \
        else {}
    plot_accuracy(path, scales, series, best, title, subtitle, ceilings, bold="all four")


def labelled_grid(
    images: Sequence[Image.Image],
    readings: Sequence[ShapeReading],
    expected: Sequence[dict[str, str]],
    title: str = "",
) -> Image.Image:
    """One cell per caption (its first image): rows shape x background, columns size x colour, as the headers say.

    Each image is upscaled (nearest, so its pixels show as they are) inside a border that is green when all four
    attributes were read right and red otherwise; under it the attributes read (size, colour, shape, background),
    each green if right and red if wrong, "-" where no shape was found; with several images per caption, how many
    of them were read right in full.
    """
    from PIL import ImageDraw, ImageFont

    colors = list(dict.fromkeys(caption["color"] for caption in expected))  # the captions' colours, in order
    backgrounds = list(dict.fromkeys(caption["background"] for caption in expected))
    per_caption = len(images) // len({caption["text"] for caption in expected})
    font = ImageFont.load_default()
    side = images[0].width * max(1, math.ceil(96 / images[0].width))
    pad, label_h, head_w, head_h, title_h = 3, 26, 64, 28, 34
    cell_w, cell_h = side + 2 * pad + 4, side + 2 * pad + label_h
    columns = [(size, color) for size in SIZES for color in colors]
    rows = [(shape, background) for shape in SHAPES for background in backgrounds]
    grid = Image.new("RGB", (head_w + len(columns) * cell_w, title_h + head_h + len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 2), title, fill="black", font=font)
    draw.text((4, 16), "border green: all four read right. Under each image the attributes read (size, colour, shape,"
              " background): green right, red wrong.", fill="black", font=font)  # fmt: skip
    for c, (size, color) in enumerate(columns):
        draw.text((head_w + c * cell_w + 4, title_h + 2), f"{size}\n{color}", fill="black", font=font)
    for r, (shape, background) in enumerate(rows):
        draw.text((4, title_h + head_h + r * cell_h + side // 2), f"{shape}\n{background}", fill="black", font=font)

    for index in range(0, len(images), per_caption):
        want = expected[index]
        x = head_w + columns.index((want["size"], want["color"])) * cell_w
        y = title_h + head_h + rows.index((want["shape"], want["background"])) * cell_h
        right = readings[index].matches(want)
        mark = RIGHT if all(right.values()) else WRONG
        draw.rectangle((x, y, x + side + 2 * pad - 1, y + side + 2 * pad - 1), fill=mark)
        grid.paste(images[index].convert("RGB").resize((side, side), Image.NEAREST), (x + pad, y + pad))
        tx, ty = x, y + side + 2 * pad + 1
        for attribute in ATTRIBUTES:
            value = getattr(readings[index], attribute)
            token = _SHORT.get(value, value) if value is not None else "-"
            draw.text((tx, ty), token, fill=RIGHT if right[attribute] else WRONG, font=font)
            tx += draw.textlength(token, font=font) + 4
        if per_caption > 1:
            group = range(index, index + per_caption)
            all_right = sum(all(readings[i].matches(expected[i]).values()) for i in group)
            draw.text((x, ty + 12), f"{all_right}/{per_caption} right", fill="black", font=font)
    return grid
