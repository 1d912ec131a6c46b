"""The digits judge: does a model trained on the built-in digits draw the digit it is asked for, and can it complete a
digit given only part of it (the course assignment's in-painting)?

The classifier sees every image the way the data was made: grey levels averaged over 8x8 blocks (the UCI digits
count "on" pixels in 4x4 blocks of 32x32 bitmaps), stretched to 0..16 (`grid_features`), so it classifies a 16 or
32 px image, generated or not, from the same 64 numbers it was trained on. It is an RBF support-vector machine (scikit-learn's `SVC`, the
classifier of its digits example) trained on the training split only, each digit also shifted by half a block in
the four directions: generated digits are not exactly registered to the block grid, and without the shifts the
accuracy on held-out digits shifted by half a block falls from 0.99 to 0.90 (with them: 0.98). It is proved on the
held-out split first (`check_classifier`), at 8x8 and after the dataset's upsampling to the pipeline's resolution.

Scores:
- generation: `per_class` images of each caption "a handwritten digit <name>" per guidance scale; the fraction
  classified as the digit asked for, overall and per class.
- in-painting: held-out digits with a mask (1 = repaint) over the bottom half, the left half or a centre square,
  completed by `LatentDiffusionInpaintPipeline(**pipeline.components)` with the true caption and with the empty
  prompt "" (the unconditional model); the fraction classified as the true digit. Beside them, two references: the
  masked digits left incomplete (the masked region black, the background), which says how much the kept part alone
  gives away, and the held-out digits after a VAE round trip, the most a model with this decoder can score.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from diffusers.utils import logging
from PIL import Image

from ..builtin.digits import (
    DIGIT_NAMES,
    MAX_VALUE,
    TEST_PER_CLASS,
    digit_caption,
    digit_image,
    load_digits_arrays,
    split_indices,
)
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

logger = logging.get_logger(__name__)

MASKS = ("bottom_half", "left_half", "center_square")
GRID = 8  # the data's own resolution
CLASSIFIER_TARGET = 0.95  # below this on held-out digits the judge's scores would not mean much


def to_grid(image: Image.Image | np.ndarray) -> np.ndarray:
    """(8, 8) float in 0..16: the image's grey level (mean of R, G, B) averaged over 8x8 blocks of pixels."""
    grey = as_rgb_array(image).mean(axis=-1)
    height, width = grey.shape
    if height % GRID or width % GRID:
        grey = np.asarray(Image.fromarray(grey.astype(np.float32), "F").resize((GRID, GRID), Image.Resampling.BOX))
        return grey.astype(np.float64) * MAX_VALUE / 255
    return grey.reshape(GRID, height // GRID, GRID, width // GRID).mean(axis=(1, 3)) * MAX_VALUE / 255


def grid_features(grids: np.ndarray) -> np.ndarray:
    """(N, 8, 8) grids → (N, 64) features, each grid stretched to 0..16 between its darkest and brightest block:
    every digit of the data spans 0 to 14..16 already (95% reach 16), so this changes the data little, but a model
    whose background drifts grey or whose ink is dim is read as if it were not (held-out digits at 0.7·x + 30:
    0.92 without the stretch, 0.99 with it)."""
    flat = np.asarray(grids, dtype=np.float64).reshape(len(grids), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    return (flat - low) / np.maximum(high - low, 1e-6) * MAX_VALUE


def _shifted(grids: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Digits shifted by half a block: upsampled to 16 px as the dataset does, moved one pixel (black comes in),
    averaged back to 8x8."""
    out = []
    for grid in grids:
        pixels = np.asarray(digit_image(grid, 2 * GRID), dtype=np.float64)
        moved = np.zeros_like(pixels)
        h, w = pixels.shape
        moved[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = pixels[
            max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
        out.append(to_grid(moved.astype(np.uint8)))
    return np.array(out)


@dataclass
class DigitClassifier:
    """The judge's classifier; `predict` takes images of any size (PIL or arrays) and returns labels."""

    model: Any
    test_per_class: int
    seed: int

    def predict(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros(0, dtype=np.int64)
        return self.model.predict(grid_features(np.array([to_grid(image) for image in images]))).astype(np.int64)


@functools.lru_cache(maxsize=4)
def digit_classifier(test_per_class: int = TEST_PER_CLASS, seed: int = 0) -> DigitClassifier:
    """The classifier, trained on the training split of (test_per_class, seed) with half-block shifts; cached."""
    from sklearn.svm import SVC

    images, labels = load_digits_arrays()
    train = split_indices(labels, "train", test_per_class, seed)
    grids = [images[train]] + [_shifted(images[train], dy, dx) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    features = grid_features(np.concatenate(grids))
    model = SVC(kernel="rbf", gamma="scale").fit(features, np.tile(labels[train], len(grids)))
    return DigitClassifier(model, test_per_class, seed)


def held_out_digits(
    resolution: int, per_class: int | None = None, test_per_class: int = TEST_PER_CLASS, seed: int = 0
) -> tuple[list[Image.Image], np.ndarray]:
    """The held-out digits as the dataset draws them at `resolution` (RGB), and their labels: all of them in row
    order (None), or the first `per_class` of each class, zeros first, then ones, and so on."""
    images, labels = load_digits_arrays()
    rows = split_indices(labels, "test", test_per_class, seed)
    if per_class is not None:
        rows = np.concatenate([rows[labels[rows] == c][:per_class] for c in range(len(DIGIT_NAMES))])
    return [digit_image(images[i], resolution).convert("RGB") for i in rows], labels[rows]


def check_classifier(resolution: int, test_per_class: int = TEST_PER_CLASS, seed: int = 0) -> dict[str, Any]:
    """The classifier's accuracy on the held-out split: on the original 8x8 digits and on the dataset's images at
    `resolution`. {"resolution", "num_images", "accuracy_8px", "accuracy"}."""
    images, labels = load_digits_arrays()
    rows = split_indices(labels, "test", test_per_class, seed)
    classifier = digit_classifier(test_per_class, seed)
    at_8 = classifier.model.predict(grid_features(images[rows]))
    upsampled, _ = held_out_digits(resolution, None, test_per_class, seed)
    return {
        "resolution": resolution,
        "num_images": len(rows),
        "accuracy_8px": float((at_8 == labels[rows]).mean()),
        "accuracy": float((classifier.predict(upsampled) == labels[rows]).mean()),
    }


def make_mask(kind: str, resolution: int) -> np.ndarray:
    """(resolution, resolution) float32, 1 = repaint, 0 = keep: the bottom half, the left half, or the centre square
    of half the side (the middle of the digit, where 3, 8 and 9 differ most)."""
    mask = np.zeros((resolution, resolution), dtype=np.float32)
    half, quarter = resolution // 2, resolution // 4
    if kind == "bottom_half":
        mask[half:] = 1
    elif kind == "left_half":
        mask[:, :half] = 1
    elif kind == "center_square":
        mask[quarter : resolution - quarter, quarter : resolution - quarter] = 1
    else:
        raise ValueError(f"`masks`: {kind!r} is not one of {list(MASKS)}.")
    return mask


def mask_out(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the region to repaint set to black (the digits' background): what in-painting starts from."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64) * (1 - mask[..., None])
    return Image.fromarray(pixels.round().astype(np.uint8))


@dataclass
class DigitsEvaluation:
    """`evaluate_digits`'s metrics, with the images behind them: per guidance scale the generated images (labels
    `expected`), per mask and "with_caption"/"without_caption" the completions (labels `inpaint_labels`)."""

    metrics: dict[str, Any]
    expected: np.ndarray
    images: dict[float, list[Image.Image]] = field(default_factory=dict)
    predicted: dict[float, np.ndarray] = field(default_factory=dict)
    inpaint_labels: np.ndarray | None = None
    completions: dict[tuple[str, str], list[Image.Image]] = field(default_factory=dict)


def _accuracy(predicted: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    per_class = {DIGIT_NAMES[c]: float((predicted[expected == c] == c).mean()) for c in np.unique(expected)}
    confusion = np.zeros((len(DIGIT_NAMES),) * 2, dtype=int)
    np.add.at(confusion, (expected, predicted), 1)
    return {"accuracy": float((predicted == expected).mean()), "per_class": per_class, "confusion": confusion.tolist()}


def run_digits_evaluation(
    pipeline,
    guidance_scales: Sequence[float] = (1.0, 2.0, 3.0, 5.0),
    per_class: int = 10,
    num_inference_steps: int = 50,
    seed: int = 0,
    batch_size: int = 100,
    masks: Sequence[str] = MASKS,
    inpaint_per_class: int = 10,
    inpaint_guidance_scale: float | None = None,
    progress: bool = True,
) -> DigitsEvaluation:
    """Judge `pipeline` (a `LatentDiffusionPipeline` trained on the digits, at its training resolution); see
    `evaluate_digits` for the arguments. Keeps the images, for grids."""
    from pipelines import LatentDiffusionInpaintPipeline

    scales = check_guidance_scales(guidance_scales)
    check_integers(per_class=(per_class, 1), num_inference_steps=(num_inference_steps, 1), seed=(seed, 0),
                   batch_size=(batch_size, 1), inpaint_per_class=(inpaint_per_class, 0))  # fmt: skip
    if inpaint_per_class > TEST_PER_CLASS:
        raise ValueError(f"`inpaint_per_class`: {inpaint_per_class} is more than the {TEST_PER_CLASS} held out per class.")
    masks = [masks] if isinstance(masks, str) else list(masks)
    for kind in masks:
        make_mask(kind, 8)  # the ValueError for an unknown mask, before any image is made
    if inpaint_guidance_scale is not None and (
        not isinstance(inpaint_guidance_scale, (int, float)) or isinstance(inpaint_guidance_scale, bool)
        or not np.isfinite(inpaint_guidance_scale) or inpaint_guidance_scale < 0
    ):  # fmt: skip
        raise ValueError(f"`inpaint_guidance_scale`: {inpaint_guidance_scale!r} must be a number ≥ 0, or None for the "
                         "best generation scale.")  # fmt: skip
    resolution = square_resolution(pipeline, "digits")
    start = time.perf_counter()
    classifier = digit_classifier()
    reference = check_classifier(resolution)
    if reference["accuracy"] < CLASSIFIER_TARGET:
        logger.warning(f"At {resolution} px the classifier gets only {reference['accuracy']:.1%} of the held-out digits "
                       f"right (the judge needs {CLASSIFIER_TARGET:.0%}), so its scores would mean little.")

    # 1. The ceiling: held-out digits through the VAE alone.
    held_out, held_out_labels = held_out_digits(resolution)
    ceiling = float((classifier.predict(vae_round_trip(pipeline, held_out)) == held_out_labels).mean())

    # 2. Generation, every caption `per_class` times at each scale.
    expected = np.repeat(np.arange(len(DIGIT_NAMES)), per_class)
    prompts = [digit_caption(int(label)) for label in expected]
    inpaint_images, inpaint_labels = held_out_digits(resolution, inpaint_per_class) if inpaint_per_class else ([], np.zeros(0, int))
    inpainter = LatentDiffusionInpaintPipeline(**pipeline.components)
    # One tick per denoising step of a pipeline call, which takes up to `batch_size` prompts.
    num_steps = num_inference_steps * (len(scales) * num_batches(len(prompts), batch_size)
                                       + 2 * len(masks) * num_batches(len(inpaint_images), batch_size))
    bar = StepBar([pipeline, inpainter], num_steps, "judging digits", progress)
    evaluation = DigitsEvaluation(metrics={}, expected=expected, inpaint_labels=inpaint_labels)
    generation, inpainting = {}, {}
    try:
        for scale in scales:
            images = generate(pipeline, prompts, scale, num_inference_steps, seed, batch_size, bar)
            evaluation.images[scale], evaluation.predicted[scale] = images, classifier.predict(images)
            generation[guidance_key(scale)] = _accuracy(evaluation.predicted[scale], expected)
        best = best_guidance_scale(scales, {k: v["accuracy"] for k, v in generation.items()})

        # 3. In-painting, with the true caption (at the best scale unless told) and with "" (no guidance: the
        #    conditional and unconditional inputs would be the same).
        inpaint_scale = best if inpaint_guidance_scale is None else float(inpaint_guidance_scale)
        captions = [digit_caption(int(label)) for label in inpaint_labels]
        for kind in masks if inpaint_images else []:
            mask = make_mask(kind, resolution)
            mask_image = Image.fromarray((mask * 255).astype(np.uint8), "L")
            result = {"masked_only": float((classifier.predict([mask_out(i, mask) for i in inpaint_images])
                                            == inpaint_labels).mean())}  # fmt: skip
            for name, prompts_, scale in (("with_caption", captions, inpaint_scale),
                                          ("without_caption", [""] * len(captions), 1.0)):  # fmt: skip
                completed = generate(inpainter, prompts_, scale, num_inference_steps, seed, batch_size, bar,
                                     image=list(inpaint_images), mask_image=mask_image)  # fmt: skip
                evaluation.completions[(kind, name)] = completed
                result[name] = float((classifier.predict(completed) == inpaint_labels).mean())
            inpainting[kind] = result
    finally:
        bar.close()

    evaluation.metrics = {
        "generation": generation,
        "best_guidance_scale": best,
        "best_accuracy": generation[guidance_key(best)]["accuracy"],
        "inpainting": {"guidance_scale": inpaint_scale, "num_images": len(inpaint_images), "masks": inpainting},
        "classifier": reference,
        "autoencoder": {"num_images": len(held_out), "accuracy": ceiling},
        "chance": 1 / len(DIGIT_NAMES),
        "settings": {"guidance_scales": scales, "per_class": per_class, "num_inference_steps": num_inference_steps,
                     "scheduler": type(pipeline.scheduler).__name__, "seed": seed, "batch_size": batch_size,
                     "resolution": resolution, "masks": masks, "inpaint_per_class": inpaint_per_class},  # fmt: skip
        "seconds": round(time.perf_counter() - start, 2),
    }
    return evaluation


def evaluate_digits(
    pipeline,
    guidance_scales: Sequence[float] = (1.0, 2.0, 3.0, 5.0),
    per_class: int = 10,
    num_inference_steps: int = 50,
    seed: int = 0,
    batch_size: int = 100,
    masks: Sequence[str] = MASKS,
    inpaint_per_class: int = 10,
    inpaint_guidance_scale: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """How well `pipeline` draws the digit asked for, and completes held-out digits: the metrics dict.

    Args:
        pipeline: a `LatentDiffusionPipeline` trained on the digits dataset (models in eval mode).
        guidance_scales: classifier-free guidance scales to compare; ≤ 1 turns guidance off.
        per_class: generated images per digit at each scale.
        num_inference_steps: denoising steps per image (generation and in-painting).
        seed: image i (of the generated ones; of the completions, for each mask and caption) uses the generator
            seeded `seed + i`.
        batch_size: prompts per pipeline call.
        masks: which of MASKS to in-paint.
        inpaint_per_class: held-out digits of each class to complete per mask (0: no in-painting).
        inpaint_guidance_scale: the scale for completions with the caption; None: the best generation scale.
        progress: one tqdm bar over all denoising steps.

    Returns:
        {"generation": {"<scale>": {"accuracy", "per_class": {name: accuracy}, "confusion": 10x10 counts,
        rows true, columns predicted}}, "best_guidance_scale", "best_accuracy",
        "inpainting": {"guidance_scale", "num_images", "masks": {mask: {"with_caption", "without_caption",
        "masked_only"}}}, "classifier": {"resolution", "num_images", "accuracy_8px", "accuracy"} (held-out digits),
        "autoencoder": {"num_images", "accuracy"} (held-out digits after the VAE: the ceiling), "chance": 0.1,
        "settings", "seconds"}; accuracies are fractions in [0, 1].
    """
    return run_digits_evaluation(
        pipeline, guidance_scales, per_class, num_inference_steps, seed, batch_size, masks, inpaint_per_class,
        inpaint_guidance_scale, progress,
    ).metrics  # fmt: skip


# ---- eval.json, the accuracy plot and the grids ----------------------------------------------------------------------
def write_digits_report(evaluation: DigitsEvaluation, output_dir: str | Path, model: str | None = None) -> list[Path]:
    """eval.json, eval_accuracy.png (generation accuracy and each mask's completion accuracy against guidance),
    eval_grid_g<best>.png (the generated digits at the best scale, one row per class, each marked right or wrong)
    and eval_inpaint_<mask>.png (per held-out digit: the original, what the pipeline was given, and its completion
    with and without the caption, marked) into `output_dir`; returns their paths, eval.json first."""
    from pipelines.utils import make_grid

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics, settings = evaluation.metrics, evaluation.metrics["settings"]
    scales, best = settings["guidance_scales"], metrics["best_guidance_scale"]
    paths = [output_dir / "eval_accuracy.png"]
    ceilings = {"the VAE alone (held-out digits)": metrics["autoencoder"]["accuracy"]}
    inpainting = metrics["inpainting"]
    subtitle = (f"{settings['per_class']} per class, {settings['num_inference_steps']} steps {settings['scheduler']}; "
                f"classifier on held-out digits {metrics['classifier']['accuracy']:.1%}; in-painting (dots, at "
                f"guidance {inpainting['guidance_scale']:g}): " + ", ".join(
                    f"{mask} {r['with_caption']:.2f} with / {r['without_caption']:.2f} without caption"
                    for mask, r in inpainting["masks"].items()))  # fmt: skip
    plot_accuracy(paths[0], scales, {"generated digit is the one asked for": [
        metrics["generation"][guidance_key(g)]["accuracy"] for g in scales]}, best,
        f"digits judge: {model}" if model else "digits judge", subtitle, ceilings,
        bold="generated digit is the one asked for")  # fmt: skip

    images, predicted = evaluation.images[best], evaluation.predicted[best]
    cells = [marked(image, p == e) for image, p, e in zip(images, predicted, evaluation.expected)]
    paths.append(output_dir / f"eval_grid_g{guidance_key(best)}.png")
    make_grid(cells, rows=len(DIGIT_NAMES)).save(paths[-1])

    if evaluation.completions:
        originals, labels = held_out_digits(settings["resolution"], settings["inpaint_per_class"])
        for mask_kind in settings["masks"]:
            mask = make_mask(mask_kind, settings["resolution"])
            row_cells = []
            for i, (original, label) in enumerate(zip(originals, labels)):
                row_cells += [marked(original, True), marked(mask_out(original, mask), True)]
                for name in ("with_caption", "without_caption"):
                    completion = evaluation.completions[(mask_kind, name)][i]
                    row_cells.append(marked(completion, _classify_one(completion) == label))
            paths.append(output_dir / f"eval_inpaint_{mask_kind}.png")
            make_grid(row_cells, rows=len(originals)).save(paths[-1])
    return [write_eval_json(metrics, output_dir, paths, model), *paths]


def _classify_one(image: Image.Image) -> int:
    return int(digit_classifier().predict([image])[0])
