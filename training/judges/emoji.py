"""The emoji judge: does a model trained on the built-in emoji dataset draw the emoji it is asked for?

Two scores, each proved on the dataset's own images first, each with its ceiling (the dataset's images after a
round trip through the model's VAE, read the same way) and its chance level:

colour   On the emoji whose name holds exactly one colour word (COLOR_WORDS: "red heart", "blue square", "green
         apple", ...; not "red hair" or "white cane", where the colour names a small part), is the image's dominant
         colour the one named? Dominant colour: the pixels further than FOREGROUND_DISTANCE from the background,
         binned on a coarse RGB grid (BIN_WIDTH), and the median of the fullest bin, so the black outlines and
         highlights OpenMoji and Noto draw do not pull it. Named by the nearest, in CIELAB, of the dataset's own
         palette: per style and colour word, the median dominant colour of the real emoji so named (as the shapes
         judge names colours by its palette). A colour word as close to the background as WHITE is to white
         (ΔE < BACKGROUND_DELTA_E) cannot be read and is left out ("white ..." on the default white background).
         The reader is proved leave-one-out on the real images (each read with a palette fitted without it).
retrieval For captions drawn at random, is the generated image nearer to its caption's real image than to every
         other real image of the dataset (top-1), or among the five nearest (top-5)? Chance: k / number of images.
         Nearness in FEATURE_SPACE, CIELAB of the image blurred by a Gaussian of σ = side / 32 and averaged over
         8x8 blocks: of the candidates in FEATURE_SPACES it kept its image nearest under the perturbations a
         generator's errors resemble (`feature_robustness`; 32 px OpenMoji, no skin tones, 1,914 images: mean
         top-1 0.78, against 0.75 without the blur, 0.69 for blurred RGB pixels and 0.48 for raw pixels).

`evaluate_emoji` returns the metrics dict; `run_emoji_evaluation` also keeps the images.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..builtin.cache import BUILD_RECORD
from .report import (
    StepBar,
    as_rgb_array,
    best_guidance_scale,
    check_guidance_scales,
    check_integers,
    generate,
    guidance_key,
    marked,
    num_batches,
    plot_accuracy,
    square_resolution,
    vae_round_trip,
    write_eval_json,
)

COLOR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white")
# The focal colours of the words (CSS / X11 names), only to tell which word the background takes away.
FOCAL_COLORS = {"red": (255, 0, 0), "orange": (255, 165, 0), "yellow": (255, 255, 0), "green": (0, 128, 0),
                "blue": (0, 0, 255), "purple": (128, 0, 128), "brown": (165, 42, 42), "black": (0, 0, 0),
                "white": (255, 255, 255)}  # fmt: skip
PART_WORDS = ("hair", "cane")  # "red hair", "white cane": the colour of a small part, not of the emoji
FOREGROUND_DISTANCE = 60.0  # RGB units from the background: antialiased edges count as background below a quarter mix
BIN_WIDTH = 32  # RGB bins of 32 levels: 8^3 bins, coarse enough that a shaded fill falls in one or two
BACKGROUND_DELTA_E = 20.0  # ΔE*ab: clearly the same colour name
READER_TARGET = 0.90


# ---- colour ----------------------------------------------------------------------------------------------------------


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0..255 (..., 3) → CIELAB (D65), the space where Euclidean distance is ΔE*ab (CIE 1976)."""
    c = np.asarray(rgb, dtype=np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    f = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(f > (6 / 29) ** 3, np.cbrt(f), f / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def color_word(name: str) -> str | None:
    """The one colour word of an emoji name, or None (none, several, or one naming a part: "red hair")."""
    words = re.findall(r"[a-z]+", name.lower())
    hits = [i for i, word in enumerate(words) if word in COLOR_WORDS]
    if len(hits) != 1 or (hits[0] + 1 < len(words) and words[hits[0] + 1] in PART_WORDS):
        return None
    return words[hits[0]]


def readable_words(background: tuple[int, int, int]) -> list[str]:
    """The colour words that can be read on `background`: those not within BACKGROUND_DELTA_E of it."""
    lab = srgb_to_lab(np.array(background))
    return [w for w in COLOR_WORDS if np.linalg.norm(srgb_to_lab(np.array(FOCAL_COLORS[w])) - lab) >= BACKGROUND_DELTA_E]


def dominant_color(image: Image.Image | np.ndarray, background: tuple[int, int, int]) -> np.ndarray | None:
    """The median RGB of the fullest coarse bin of the non-background pixels; None if there are none."""
    pixels = as_rgb_array(image).reshape(-1, 3)
    foreground = pixels[np.linalg.norm(pixels - np.array(background), axis=1) > FOREGROUND_DISTANCE]
    if len(foreground) == 0:
        return None
    bins = (foreground // BIN_WIDTH).astype(int) @ np.array([64, 8, 1])
    return np.median(foreground[bins == np.bincount(bins).argmax()], axis=0)


def fit_palette(colors: Sequence[np.ndarray | None], words: Sequence[str]) -> dict[str, np.ndarray]:
    """Per colour word, the median CIELAB of the dominant colours of the images so named (None: skipped)."""
    palette = {}
    for word in dict.fromkeys(words):
        points = [srgb_to_lab(c) for c, w in zip(colors, words) if w == word and c is not None]
        if points:
            palette[word] = np.median(points, axis=0)
    return palette


def name_color(color: np.ndarray | None, palette: dict[str, np.ndarray]) -> str | None:
    """The palette's word nearest to `color` in CIELAB; None for no colour."""
    if color is None or not palette:
        return None
    lab = srgb_to_lab(color)
    return min(palette, key=lambda word: float(np.linalg.norm(palette[word] - lab)))


# ---- retrieval -------------------------------------------------------------------------------------------------------


def _blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of σ = `sigma` px (separable, kernel to 3σ, edges repeated) of float (N, H, W, C) images."""
    radius = max(1, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    height, width = pixels.shape[1:3]
    padded = np.pad(pixels, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(w * padded[:, i : i + height] for i, w in enumerate(kernel))
    return sum(w * rows[:, :, i : i + width] for i, w in enumerate(kernel))


def _blocks(pixels: np.ndarray, side: int) -> np.ndarray:
    """(N, H, W, C) → (N, side, side, C): the mean of each block."""
    count, height, width = pixels.shape[:3]
    if height % side or width % side:
        raise ValueError(f"`image`: {height}x{width} px does not divide into {side}x{side} blocks.")
    return pixels.reshape(count, side, height // side, side, width // side, -1).mean(axis=(2, 4))


# The candidates measured by `feature_robustness`: name → (N, H, W, 3) RGB 0..255 → (N, ...) features.
FEATURE_SPACES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rgb pixels": lambda p: p,
    "rgb 8x8 blocks": lambda p: _blocks(p, 8),
    "rgb pixels, blurred": lambda p: _blur(p, p.shape[2] / 32),
    "lab 16x16 blocks": lambda p: srgb_to_lab(_blocks(p, 16)),
    "lab 8x8 blocks": lambda p: srgb_to_lab(_blocks(p, 8)),
    "lab 8x8 blocks, blurred": lambda p: srgb_to_lab(_blocks(_blur(p, p.shape[2] / 32), 8)),
}
FEATURE_SPACE = "lab 8x8 blocks, blurred"


def features(images: Sequence[Image.Image | np.ndarray], space: str = FEATURE_SPACE) -> np.ndarray:
    """(N, D) features of `images` (all of one size) in FEATURE_SPACES[space], 1,000 at a time."""
    out = []
    for start in range(0, len(images), 1000):
        pixels = np.stack([as_rgb_array(image) for image in images[start : start + 1000]])
        out.append(FEATURE_SPACES[space](pixels).reshape(len(pixels), -1))
    return np.concatenate(out)


@functools.lru_cache(maxsize=4)
def _gallery(folder: str) -> np.ndarray:
    return features(_load(folder).images)


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For query i, how many gallery items are strictly nearer (squared Euclidean) than gallery[targets[i]]: 0 is a
    top-1 hit, < 5 a top-5 hit. Ties count in the query's favour (they do not occur between distinct images)."""
    distances = (queries**2).sum(1)[:, None] - 2 * queries @ gallery.T + (gallery**2).sum(1)[None, :]
    return (distances < distances[np.arange(len(queries)), targets][:, None]).sum(axis=1)


def _scores(ranks: np.ndarray, gallery_size: int) -> dict[str, float]:
    return {"top1": float((ranks < 1).mean()), "top5": float((ranks < 5).mean()),
            "chance_top1": 1 / gallery_size, "chance_top5": min(5, gallery_size) / gallery_size}  # fmt: skip


def _perturbations(seed: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """What a generator gets wrong, on real (H, W, 3) images: noise, blur, a shift, a smaller drawing, the detail a
    factor-4 autoencoder loses, and blur + noise + shift at once."""
    rng = np.random.default_rng(seed)

    def resized(p: np.ndarray, size: int) -> Image.Image:
        return Image.fromarray(p.clip(0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)

    def smaller(p: np.ndarray) -> np.ndarray:
        side, inner = p.shape[0], round(p.shape[0] * 0.85)
        canvas = Image.fromarray(np.broadcast_to(p[0, 0], p.shape).astype(np.uint8))
        canvas.paste(resized(p, inner), ((side - inner) // 2,) * 2)
        return np.asarray(canvas, dtype=np.float64)

    side = lambda p: p.shape[0]
    return {
        "noise σ=60": lambda p: (p + rng.normal(0, 60, p.shape)).clip(0, 255),
        "blur σ=side/16": lambda p: _blur(p[None], side(p) / 16)[0],
        "shift side/16": lambda p: np.roll(p, (side(p) // 16,) * 2, axis=(0, 1)),
        "scale 0.85": smaller,
        "down-up 4x": lambda p: np.asarray(resized(np.asarray(resized(p, side(p) // 4)), side(p)), dtype=np.float64),
        "blur+noise+shift": lambda p: np.roll((_blur(p[None], side(p) * 3 / 64)[0] + rng.normal(0, 40, p.shape)).clip(0, 255),
                                              side(p) // 32, axis=1),  # fmt: skip
    }


def feature_robustness(
    data_dir: str | Path, spaces: Sequence[str] | None = None, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Retrieval of perturbed real images among the clean ones, per feature space (all of FEATURE_SPACES by
    default) and perturbation: {space: {perturbation: {"top1", "top5"}, "mean_top1", "mean_top5"}, "num_images",
    "chance_top1"}. About 5 s per space for 1,914 images at 32 px."""
    from tqdm.auto import tqdm

    spaces = list(FEATURE_SPACES) if spaces is None else list(spaces)
    unknown = [space for space in spaces if space not in FEATURE_SPACES]
    if unknown:
        raise ValueError(f"`spaces`: {unknown!r} are not in FEATURE_SPACES: {list(FEATURE_SPACES)}.")
    references = load_references(data_dir)
    pixels = [as_rgb_array(image) for image in references.images]
    table: dict[str, Any] = {"num_images": len(pixels), "chance_top1": 1 / len(pixels)}
    # As 8-bit images, as a generator's come (and as `features` reads arrays of integers: 0..255).
    pixels = [p.astype(np.uint8) for p in pixels]
    perturbed = {name: [f(p.astype(np.float64)).clip(0, 255).round().astype(np.uint8) for p in pixels]
                 for name, f in _perturbations(seed).items()}  # fmt: skip
    for space in tqdm(spaces, unit="space", desc="feature spaces", disable=not progress):
        gallery = features(pixels, space)
        row = {}
        for name, images in perturbed.items():
            ranks = retrieval_ranks(features(images, space), gallery, np.arange(len(pixels)))
            row[name] = {"top1": float((ranks < 1).mean()), "top5": float((ranks < 5).mean())}
        means = {f"mean_{k}": float(np.mean([scores[k] for scores in row.values()])) for k in ("top1", "top5")}
        table[space] = {**row, **means}
    return table


# ---- the dataset's own images ----------------------------------------------------------------------------------------


@dataclass
class EmojiReferences:
    """A built emoji dataset folder read back: its rows (metadata.jsonl), images (RGB) and build record."""

    rows: list[dict[str, Any]]
    images: list[Image.Image]
    record: dict[str, Any]

    @property
    def background(self) -> tuple[int, int, int]:
        return tuple(int(self.record["background"][i : i + 2], 16) for i in (1, 3, 5))

    @property
    def resolution(self) -> int:
        return int(self.record["resolution"])

    def color_subset(self) -> list[int]:
        """Rows whose name holds one colour word that can be read on this background."""
        readable = set(readable_words(self.background))
        return [i for i, row in enumerate(self.rows) if color_word(row["name"]) in readable]


@functools.lru_cache(maxsize=4)
def _load(folder: str) -> EmojiReferences:
    path = Path(folder)
    record_path = path / BUILD_RECORD
    if not record_path.is_file() or json.loads(record_path.read_text(encoding="utf-8")).get("dataset") != "emoji":
        raise FileNotFoundError(
            f"`data_dir`: {folder!r} is not an emoji dataset built by sculpt (no {BUILD_RECORD} naming it); build one "
            "with training.builtin.emoji.emoji_dataset_dir or scripts/make_emoji_dataset.py."
        )
    rows = [json.loads(line) for line in (path / "metadata.jsonl").read_text(encoding="utf-8").splitlines() if line]
    images = [Image.open(path / row["file_name"]).convert("RGB") for row in rows]
    return EmojiReferences(rows, images, json.loads(record_path.read_text(encoding="utf-8")))


def load_references(data_dir: str | Path) -> EmojiReferences:
    """The dataset in `data_dir` (built by training.builtin.emoji), read once per process."""
    return _load(str(Path(data_dir).expanduser().resolve()))


def _palettes(references: EmojiReferences, subset: Sequence[int]) -> dict[str, dict[str, np.ndarray]]:
    colors = {i: dominant_color(references.images[i], references.background) for i in subset}
    palettes = {}
    for style in dict.fromkeys(references.rows[i]["style"] for i in subset):
        rows = [i for i in subset if references.rows[i]["style"] == style]
        palettes[style] = fit_palette([colors[i] for i in rows], [color_word(references.rows[i]["name"]) for i in rows])
    return palettes


def read_colors(references: EmojiReferences, subset: Sequence[int], images: Sequence[Image.Image]) -> list[str | None]:
    """The colour word read off each of `images` (drawn for rows `subset`), with the style's palette."""
    palettes = _palettes(references, subset)
    return [name_color(dominant_color(image, references.background), palettes[references.rows[i]["style"]])
            for i, image in zip(subset, images)]  # fmt: skip


def check_color_reader(data_dir: str | Path) -> dict[str, Any]:
    """The colour reader on the dataset's own images, leave-one-out: each image named with a palette fitted on the
    others of its style. {"num_images", "accuracy", "wrong": [(name, style, read)], "words": {word: count}}."""
    references = load_references(data_dir)
    subset = references.color_subset()
    colors = {i: dominant_color(references.images[i], references.background) for i in subset}
    wrong, right = [], 0
    for i in subset:
        others = [j for j in subset if j != i and references.rows[j]["style"] == references.rows[i]["style"]]
        palette = fit_palette([colors[j] for j in others], [color_word(references.rows[j]["name"]) for j in others])
        read = name_color(colors[i], palette)
        if read == color_word(references.rows[i]["name"]):
            right += 1
        else:
            wrong.append((references.rows[i]["name"], references.rows[i]["style"], read))
    words = dict(sorted(Counter(color_word(references.rows[i]["name"]) for i in subset).items()))
    return {"num_images": len(subset), "accuracy": right / len(subset) if subset else None, "wrong": wrong, "words": words}


# ---- judging a pipeline ----------------------------------------------------------------------------------------------


@dataclass
class EmojiEvaluation:
    """`run_emoji_evaluation`'s metrics, and per guidance scale the images generated for the dataset rows `rows`
    (in that order) and the colour words read off those of `color_rows`."""

    metrics: dict[str, Any]
    rows: list[int]
    color_rows: list[int]
    retrieval_rows: list[int]
    images: dict[float, list[Image.Image]] = field(default_factory=dict)
    colors_read: dict[float, list[str | None]] = field(default_factory=dict)


def _judge(references, gallery, rows, color_rows, retrieval_rows, images) -> tuple[dict, list]:
    """Colour accuracy and retrieval scores of `images` (one per row of `rows`)."""
    by_row = dict(zip(rows, images))
    colour = None
    read = []
    if color_rows:
        read = read_colors(references, color_rows, [by_row[i] for i in color_rows])
        expected = [color_word(references.rows[i]["name"]) for i in color_rows]
        colour = {"accuracy": float(np.mean([r == e for r, e in zip(read, expected)])), "num_images": len(color_rows),
                  "chance": 1 / len(set(expected))}
    ranks = retrieval_ranks(features([by_row[i] for i in retrieval_rows]), gallery, np.array(retrieval_rows))
    return {"color": colour, "retrieval": {**_scores(ranks, len(gallery)), "num_images": len(retrieval_rows)}}, read


def run_emoji_evaluation(
    pipeline,
    data_dir: str | Path,
    guidance_scales: Sequence[float] = (1.0, 2.0, 3.0, 5.0),
    num_captions: int = 256,
    num_inference_steps: int = 50,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> EmojiEvaluation:
    """Judge `pipeline` against the emoji dataset in `data_dir`; see `evaluate_emoji`. Keeps the images."""
    scales = check_guidance_scales(guidance_scales)
    check_integers(num_captions=(num_captions, 1), num_inference_steps=(num_inference_steps, 1), seed=(seed, 0),
                   batch_size=(batch_size, 1))  # fmt: skip
    references = load_references(data_dir)
    resolution = square_resolution(pipeline, "emoji")
    if resolution != references.resolution:
        raise ValueError(f"`pipeline`: makes {resolution} px images; the dataset in `data_dir` is "
                         f"{references.resolution} px. Judge it against a dataset built at {resolution} px.")  # fmt: skip
    start = time.perf_counter()

    # 1. Which captions: every colour one, and `num_captions` drawn at random (generator seeded 0, so the same
    #    captions whatever `seed`) for retrieval; each generated once.
    color_rows = references.color_subset()
    draw = np.random.default_rng(0).permutation(len(references.rows))[: min(num_captions, len(references.rows))]
    retrieval_rows = sorted(int(i) for i in draw)
    rows = sorted(set(color_rows) | set(retrieval_rows))
    gallery = _gallery(str(Path(data_dir).expanduser().resolve()))

    # 2. The reader proved on the real images, and the ceiling: the real images through the VAE alone.
    reader = check_color_reader(data_dir)
    real, _ = _judge(references, gallery, rows, color_rows, retrieval_rows, [references.images[i] for i in rows])
    decoded = vae_round_trip(pipeline, [references.images[i] for i in rows])
    autoencoder, _ = _judge(references, gallery, rows, color_rows, retrieval_rows, decoded)

    # 3. Generate each caption at each scale; image i of `rows` uses the generator seeded seed + i at every scale.
    prompts = [references.rows[i]["text"] for i in rows]
    num_steps = num_inference_steps * len(scales) * num_batches(len(prompts), batch_size)  # a tick per call's step
    bar = StepBar([pipeline], num_steps, "judging emoji", progress)
    evaluation = EmojiEvaluation(metrics={}, rows=rows, color_rows=color_rows, retrieval_rows=retrieval_rows)
    scores = {}
    try:
        for scale in scales:
            images = generate(pipeline, prompts, scale, num_inference_steps, seed, batch_size, bar)
            evaluation.images[scale] = images
            scores[guidance_key(scale)], evaluation.colors_read[scale] = _judge(
                references, gallery, rows, color_rows, retrieval_rows, images
            )
    finally:
        bar.close()

    best = best_guidance_scale(scales, {k: v["retrieval"]["top5"] for k, v in scores.items()})
    evaluation.metrics = {
        "scores": scores,
        "best_guidance_scale": best,
        "best_scores": scores[guidance_key(best)],
        "reader": {"color_leave_one_out": reader, "real_images": real},
        "autoencoder": autoencoder,
        "settings": {"guidance_scales": scales, "num_captions": len(retrieval_rows), "num_color_captions": len(color_rows),
                     "num_inference_steps": num_inference_steps, "scheduler": type(pipeline.scheduler).__name__,
                     "seed": seed, "batch_size": batch_size, "resolution": resolution, "feature_space": FEATURE_SPACE,
                     "gallery_size": len(references.rows), "dataset": references.record},  # fmt: skip
        "seconds": round(time.perf_counter() - start, 2),
    }
    return evaluation


def evaluate_emoji(
    pipeline,
    data_dir: str | Path,
    guidance_scales: Sequence[float] = (1.0, 2.0, 3.0, 5.0),
    num_captions: int = 256,
    num_inference_steps: int = 50,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """How well `pipeline` draws the emoji it is asked for: the metrics dict.

    Args:
        pipeline: a `LatentDiffusionPipeline` trained on the emoji dataset in `data_dir`, at its resolution.
        data_dir: the dataset folder (`emoji_dataset_dir(...)` or scripts/make_emoji_dataset.py), for the captions,
            the real images and the background.
        guidance_scales: classifier-free guidance scales to compare.
        num_captions: captions drawn at random for retrieval (all colour captions are judged too).
        num_inference_steps: denoising steps per image.
        seed: image i of the judged captions (in dataset order) uses the generator seeded `seed + i`.
        batch_size: prompts per pipeline call.
        progress: one tqdm bar over all denoising steps.

    Returns:
        {"scores": {"<scale>": {"color": {"accuracy", "num_images", "chance"} or None without colour captions,
        "retrieval": {"top1", "top5", "chance_top1", "chance_top5", "num_images"}}}, "best_guidance_scale" (by
        retrieval top-5), "best_scores", "reader": {"color_leave_one_out": check_color_reader(...), "real_images":
        the same scores for the real images}, "autoencoder": the same scores for the real images after the VAE (the
        ceiling), "settings", "seconds"}; scores are fractions in [0, 1].
    """
    return run_emoji_evaluation(
        pipeline, data_dir, guidance_scales, num_captions, num_inference_steps, seed, batch_size, progress
    ).metrics


# ---- eval.json, the accuracy plot and the grid -----------------------------------------------------------------------
def write_emoji_report(evaluation: EmojiEvaluation, data_dir: str | Path, output_dir: str | Path,
                       model: str | None = None, grid_captions: int = 64) -> list[Path]:  # fmt: skip
    """eval.json, eval_accuracy.png (colour accuracy and retrieval top-1 / top-5 against guidance, with the VAE's
    ceilings) and eval_grid_g<best>.png (`grid_captions` of the judged captions: each real image beside the one
    generated for its caption at the best scale, green where the generated one retrieves its own caption in the
    top 5) into `output_dir`; returns their paths, eval.json first."""
    from pipelines.utils import make_grid

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics, settings = evaluation.metrics, evaluation.metrics["settings"]
    scales, best = settings["guidance_scales"], metrics["best_guidance_scale"]
    scores = [metrics["scores"][guidance_key(g)] for g in scales]
    series = {"retrieval top-5": [s["retrieval"]["top5"] for s in scores],
              "retrieval top-1": [s["retrieval"]["top1"] for s in scores]}  # fmt: skip
    ceiling = metrics["autoencoder"]
    ceilings = {"top-5 after the VAE alone": ceiling["retrieval"]["top5"]}
    if scores[0]["color"] is not None:
        series["colour"] = [s["color"]["accuracy"] for s in scores]
        ceilings["colour after the VAE alone"] = ceiling["color"]["accuracy"]
    subtitle = (f"{settings['num_captions']} captions for retrieval among {settings['gallery_size']} (chance top-5 "
                f"{scores[0]['retrieval']['chance_top5']:.2%}), {settings['num_color_captions']} colour captions; "
                f"{settings['num_inference_steps']} steps {settings['scheduler']}")  # fmt: skip
    paths = [output_dir / "eval_accuracy.png"]
    plot_accuracy(paths[0], scales, series, best, f"emoji judge: {model}" if model else "emoji judge", subtitle,
                  ceilings, bold="retrieval top-5")  # fmt: skip

    references = load_references(data_dir)
    by_row = dict(zip(evaluation.rows, evaluation.images[best]))
    shown = evaluation.retrieval_rows[:grid_captions]
    gallery = _gallery(str(Path(data_dir).expanduser().resolve()))
    ranks = retrieval_ranks(features([by_row[i] for i in shown]), gallery, np.array(shown))
    cells, captions = [], []
    for row, rank in zip(shown, ranks):
        cells += [marked(references.images[row], True), marked(by_row[row], rank < 5)]
        captions += [references.rows[row]["text"], f"rank {int(rank) + 1}"]
    paths.append(output_dir / f"eval_grid_g{guidance_key(best)}.png")
    make_grid(cells, columns=16, padding=2, captions=captions).save(paths[-1])
    return [write_eval_json(metrics, output_dir, paths, model), *paths]
