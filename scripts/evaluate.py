"""Judge a model trained on the shapes dataset: generate every caption of its grammar at several guidance scales and
read size, colour, shape and background back off the pixels (training/judges/shapes.py).

    python scripts/evaluate.py outputs/quickstart/model --output_dir outputs/quickstart
    python scripts/evaluate.py outputs/shapes --per_caption 4 --guidance 1,2,3,5,7 --scheduler ddim --steps 50
    python scripts/evaluate.py outputs/quickstart/model --lora outputs/lora-orange --colors orange --output_dir e

--colors judges the captions of other colours (e.g. orange, which the base grammar lacks: training/builtin/shapes.py);
the reader then chooses among the base six and those, or among --palette. --lora loads LoRA weights on the model
first, at strength --lora_scale.

Writes into --output_dir (default: MODEL_FOLDER itself, next to training's samples.png and loss.png) eval.json,
eval_accuracy.png (accuracy against guidance scale) and eval_grid_g<scale>.png per scale, and prints the accuracies.
The reader is first checked on images drawn by the dataset itself; below 99% there the run stops. Bad arguments print
one line to stderr and exit with code 2, before anything is loaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from pipelines.schedulers import SCHEDULERS  # noqa: E402  (torch-free: errors come before imports)
from training.cli import OneLineParser  # noqa: E402
from training.cli import fail as _fail  # noqa: E402

PROG = "evaluate.py"


def fail(message: str) -> None:
    _fail(PROG, message)


def parse_guidance(text: str) -> list[float]:
    try:
        scales = [float(part) for part in text.split(",")]
    except ValueError:
        scales = []
    if not scales or not all(math.isfinite(g) and g >= 0 for g in scales):
        fail(f"--guidance: {text!r} must be comma-separated numbers >= 0, e.g. 1,2,3,5.")
    if len(set(scales)) != len(scales):
        fail(f"--guidance: {text!r} repeats a scale; give each once.")
    return scales


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check everything that can be checked before torch is imported, so bad arguments fail fast."""
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("model", metavar="MODEL_FOLDER", help="a pipeline folder written by save_pretrained")
    parser.add_argument("--per_caption", type=int, default=1, help="images per caption (108 captions)")
    parser.add_argument("--guidance", default="1,2,3,5", help="comma-separated guidance scales (<= 1: no guidance)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=None, help="default: the model's own")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i, at every guidance scale")
    parser.add_argument("--batch_size", type=int, default=108, help="prompts per pipeline call")
    parser.add_argument("--output_dir", default=None, help="default: MODEL_FOLDER")
    parser.add_argument("--colors", default=None, help="comma-separated caption colours (default: the base six)")
    parser.add_argument("--palette", default=None, help="comma-separated colours the reader picks from (default: the "
                        "base six and --colors)")
    parser.add_argument("--lora", default=None, help="LoRA weights to load on the model first (folder or file)")
    parser.add_argument("--lora_scale", type=float, default=None, help="the LoRA's strength (default 1)")
    args = parser.parse_args(argv)

    model = Path(args.model).expanduser()
    if not model.is_dir():
        fail(f"MODEL_FOLDER: no such folder: {args.model}")
    if not (model / "model_index.json").is_file():
        fail(f"MODEL_FOLDER: {args.model} has no model_index.json; pass a folder written by save_pretrained.")
    args.guidance = parse_guidance(args.guidance)
    for flag, value, low in (("--per_caption", args.per_caption, 1), ("--steps", args.steps, 1),
                             ("--seed", args.seed, 0), ("--batch_size", args.batch_size, 1)):  # fmt: skip
        if value < low:
            fail(f"{flag}: {value} must be >= {low}.")
    from training.builtin.shapes import check_colors  # torch-free

    for flag in ("colors", "palette"):
        if getattr(args, flag) is not None:
            try:
                setattr(args, flag, check_colors([c.strip() for c in getattr(args, flag).split(",")], flag))
            except ValueError as error:
                fail(str(error).replace(f"`{flag}`", f"--{flag}"))
    if args.lora_scale is not None and args.lora is None:
        fail("--lora_scale needs --lora: it scales the LoRA weights that --lora loads.")
    if args.lora is not None and not Path(args.lora).expanduser().exists():
        fail(f"--lora: no such file or folder: {args.lora}")
    args.output_dir = Path(args.output_dir).expanduser() if args.output_dir else model
    if args.output_dir.exists() and not args.output_dir.is_dir():
        fail(f"--output_dir: {args.output_dir} exists and is not a folder.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from pipelines import LatentDiffusionPipeline
    from training.judges.report import guidance_key
    from training.judges.shapes import run_evaluation, write_report

    try:
        pipe = LatentDiffusionPipeline.from_pretrained(args.model)
    except Exception as error:  # noqa: BLE001 - any load failure is a bad MODEL_FOLDER argument to the user
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        fail(f"MODEL_FOLDER: could not load {args.model!r}: {first_line}")
    if args.lora is not None:
        lora = Path(args.lora).expanduser()
        try:
            pipe.load_lora_weights(str(lora.parent if lora.is_file() else lora),
                                   **({"weight_name": lora.name} if lora.is_file() else {}))  # fmt: skip
        except (ValueError, OSError, ImportError) as error:
            fail(f"--lora: {' '.join(str(error).split()).replace('`pretrained_model_name_or_path_or_dict`: ', '')}")
    call_kwargs = {"cross_attention_kwargs": {"scale": args.lora_scale}} if args.lora_scale is not None else None
    try:
        evaluation = run_evaluation(
            pipe, args.guidance, args.per_caption, args.steps, args.scheduler, args.seed, args.batch_size, strict=True,
            colors=args.colors, palette=args.palette, call_kwargs=call_kwargs,
        )
    except ValueError as error:  # raised before generating: a model whose resolution the reader cannot read
        fail(str(error))
    model_name = str(args.model) + (f" + LoRA {args.lora}" if args.lora else "") + (
        f" at scale {args.lora_scale:g}" if args.lora_scale is not None else "")
    written = write_report(evaluation, args.output_dir, model=model_name)

    metrics, reader = evaluation.metrics, evaluation.metrics["reader"]
    print(f"reader on {reader['num_images']} dataset images at {reader['resolution']} px: "
          f"{reader['accuracy']['all']:.1%}")
    ceiling = metrics["autoencoder"]
    print(f"the same after the model's VAE (encode, decode), the most it can score: {ceiling['accuracy']['all']:.1%} "
          f"of {ceiling['num_images']}")
    print(f"{'guidance':>8}  {'size':>5}  {'colour':>6}  {'shape':>5}  {'background':>10}  {'all four':>8}")
    for scale in metrics["settings"]["guidance_scales"]:
        a = metrics["accuracy"][guidance_key(scale)]
        print(f"{scale:>8g}  {a['size']:>5.3f}  {a['color']:>6.3f}  {a['shape']:>5.3f}  {a['background']:>10.3f}  "
              f"{a['all']:>8.3f}")  # fmt: skip
    settings = metrics["settings"]
    print(f"best guidance scale: {metrics['best_guidance_scale']:g} ({settings['num_images']} images, "
          f"{settings['num_inference_steps']} steps {settings['scheduler']}, {metrics['seconds']:.0f} s)")
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
