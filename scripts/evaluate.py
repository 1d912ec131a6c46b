"""Judge a model trained on a built-in dataset: how well it draws what it is told, read off the pixels
(training/judges/). The dataset comes from the model folder's record (its config.yaml; shapes without one), or --dataset.

    shapes   every caption of the grammar at several guidance scales; size, colour, shape and background read back
    digits   class accuracy of generated digits per guidance scale, and in-painting of held-out digits (bottom half,
             left half, centre square) with and without the caption of the true class
    emoji    colour accuracy on the emoji whose name holds one colour word, and nearest-reference retrieval (top-1 /
             top-5 among every caption's real image)

    python scripts/evaluate.py outputs/quickstart/model --lora outputs/lora-yellow --backgrounds yellow --output_dir eval_yellow

--colors judges the captions of other colours (e.g. orange, which the base grammar lacks: training/builtin/shapes.py);
the reader then chooses among the base six and those, or among --palette. --backgrounds does the same for the
captions' backgrounds (e.g. yellow), read among the base three and those. --lora loads LoRA weights on the model
first, at strength --lora_scale. Sampling runs as the model trained (its config.yaml's mixed_precision and
attention_processor: e.g. bf16 autocast with the classic attention processor), unless --mixed_precision or
--attention_processor say otherwise; eval.json's settings record both.

    python scripts/evaluate.py outputs/quickstart/model --guidance 1,2,3,5 --steps 50 --per_caption 2
    python scripts/evaluate.py outputs/digits/model --per_class 20 --inpaint_per_class 10
    python scripts/evaluate.py outputs/emoji/model --num_captions 256 --guidance 1,3,5

Writes into --output_dir (default: MODEL_FOLDER itself) eval.json, eval_accuracy.png (accuracy against guidance
scale) and right/wrong grids, and prints the tables. Each judge is first proved on the dataset's own images (and the
model's VAE round trip is measured as its ceiling). Bad arguments print one line to stderr and exit with code 2,
before anything is loaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from pipelines.schedulers import SCHEDULERS  # noqa: E402  (torch-free: errors come before imports)
from training.cli import ATTENTION_PROCESSORS, MIXED_PRECISIONS, OneLineParser  # noqa: E402
from training.cli import fail as _fail  # noqa: E402

PROG = "evaluate.py"
DATASETS = ("shapes", "digits", "emoji")


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
    parser.add_argument("--dataset", choices=DATASETS, default=None, help="default: the one the model trained on")
    parser.add_argument("--guidance", default="1,2,3,5", help="comma-separated guidance scales (<= 1: no guidance)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=None, help="default: the model's own")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i, at every guidance scale")
    parser.add_argument("--batch_size", type=int, default=108, help="prompts per pipeline call")
    parser.add_argument("--per_caption", type=int, default=1, help="shapes: images per caption (108 captions)")
    parser.add_argument("--per_class", type=int, default=10, help="digits: generated images per digit")
    parser.add_argument("--inpaint_per_class", type=int, default=10, help="digits: held-out digits per class to "
                        "complete per mask (0: no in-painting)")  # fmt: skip
    parser.add_argument("--num_captions", type=int, default=256, help="emoji: captions judged for retrieval")
    parser.add_argument("--cache_dir", default=None, help="emoji: where the dataset is built (default: the model's "
                        "training cache_dir)")  # fmt: skip
    parser.add_argument("--output_dir", default=None, help="default: MODEL_FOLDER")
    parser.add_argument("--colors", default=None, help="comma-separated caption colours (default: the base six)")
    parser.add_argument("--palette", default=None, help="comma-separated colours the reader picks from (default: the "
                        "base six and --colors)")
    parser.add_argument("--backgrounds", default=None, help="comma-separated caption backgrounds (default: the base "
                        "three; the reader picks among those three and these)")
    parser.add_argument("--background_palette", default=None, help="comma-separated backgrounds the reader picks "
                        "from (default: the base three and --backgrounds)")
    parser.add_argument("--lora", default=None, help="LoRA weights to load on the model first (folder or file)")
    parser.add_argument("--lora_scale", type=float, default=None, help="the LoRA's strength (default 1)")
    parser.add_argument("--mixed_precision", choices=MIXED_PRECISIONS, default=None, help="sample (and measure the "
                        "VAE's ceiling) under this autocast; default: the model's training setting (its config.yaml), "
                        "else no")  # fmt: skip
    parser.add_argument("--attention_processor", choices=ATTENTION_PROCESSORS, default=None, help="the UNet's "
                        "attention processor (classic: the one bf16 pays with on CPU); default: the model's training "
                        "setting, else sdpa")  # fmt: skip
    args = parser.parse_args(argv)

    model = Path(args.model).expanduser()
    if not model.is_dir():
        fail(f"MODEL_FOLDER: no such folder: {args.model}")
    if not (model / "model_index.json").is_file():
        fail(f"MODEL_FOLDER: {args.model} has no model_index.json; pass a folder written by save_pretrained.")
    args.guidance = parse_guidance(args.guidance)
    for flag, value, low in (("--per_caption", args.per_caption, 1), ("--steps", args.steps, 1),
                             ("--seed", args.seed, 0), ("--batch_size", args.batch_size, 1),
                             ("--per_class", args.per_class, 1), ("--inpaint_per_class", args.inpaint_per_class, 0),
                             ("--num_captions", args.num_captions, 1)):  # fmt: skip
        if value < low:
            fail(f"{flag}: {value} must be >= {low}.")
    from training.builtin.shapes import ALL_COLORS, check_backgrounds, check_colors  # torch-free

    checks = {  # in this order: --backgrounds is checked against the colours --colors left
        "colors": lambda names: check_colors(names, "colors"),
        "palette": lambda names: check_colors(names, "palette"),
        "backgrounds": lambda names: check_backgrounds(names, args.colors),
        "background_palette": lambda names: check_backgrounds(names, ALL_COLORS, "background_palette"),
    }
    for flag, check in checks.items():
        if getattr(args, flag) is not None:
            try:
                setattr(args, flag, check([name.strip() for name in getattr(args, flag).split(",")]))
            except ValueError as error:
                fail(str(error).replace(f"`{flag}`", f"--{flag}"))
    if args.lora_scale is not None and args.lora is None:
        fail("--lora_scale needs --lora: it scales the LoRA weights that --lora loads.")
    if args.lora is not None and not Path(args.lora).expanduser().exists():
        fail(f"--lora: no such file or folder: {args.lora}")
    args.output_dir = Path(args.output_dir).expanduser() if args.output_dir else model
    if args.output_dir.exists() and not args.output_dir.is_dir():
        fail(f"--output_dir: {args.output_dir} exists and is not a folder.")
    args.record = read_record(model)
    if args.dataset is None:
        # A folder without training's record (saved by hand) is judged as shapes, the judge this script began with.
        recorded = (args.record or {}).get("dataset_name", "shapes")
        if recorded not in DATASETS:
            fail(f"--dataset: MODEL_FOLDER {args.model} learned dataset_name {recorded!r} (its config.yaml), which no "
                 f"judge reads; pass --dataset {'|'.join(DATASETS)} to judge it as one of those.")
        args.dataset = recorded
    # Sample as the model trained, unless told otherwise: a bf16 + classic-attention run is judged in bf16 too.
    for flag, vocabulary in (("mixed_precision", MIXED_PRECISIONS), ("attention_processor", ATTENTION_PROCESSORS)):
        if getattr(args, flag) is None:
            recorded = (args.record or {}).get(flag)
            setattr(args, flag, recorded if recorded in vocabulary else vocabulary[0])
    if args.dataset != "shapes":
        for flag in ("colors", "palette", "backgrounds", "background_palette", "lora_scale"):
            if getattr(args, flag) is not None:
                fail(f"--{flag}: only the shapes judge takes it (this is the {args.dataset} judge).")
    return args


def read_record(model: Path) -> dict | None:
    """The resolved training config a sculpt training run saved beside the pipeline, as plain YAML."""
    import yaml

    path = model / "config.yaml"
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as error:
        fail(f"MODEL_FOLDER: cannot read {path}: {error}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from pipelines import LatentDiffusionPipeline

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
    from training.models import set_attention_processor
    from training.run import cpu_bf16_warning

    set_attention_processor(pipe.unet, args.attention_processor)
    warning = cpu_bf16_warning(args.mixed_precision, pipe.device.type, remedy="--mixed_precision no")
    if warning is not None:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision)
    if dtype is not None or args.attention_processor != ATTENTION_PROCESSORS[0]:
        print(f"sampling in {args.mixed_precision if dtype is not None else 'float32'} with the "
              f"{args.attention_processor} attention processor")
    try:
        with torch.autocast(pipe.device.type, dtype=dtype, enabled=dtype is not None):
            written = {"shapes": judge_shapes, "digits": judge_digits, "emoji": judge_emoji}[args.dataset](pipe, args)
    except ValueError as error:  # raised before generating: e.g. a resolution the reader cannot read
        fail(str(error))
    print("wrote " + ", ".join(str(path) for path in written))


def record_precision(evaluation, args):
    """The sampling precision and attention processor go into eval.json's settings, beside the other choices."""
    evaluation.metrics["settings"].update(mixed_precision=args.mixed_precision,
                                          attention_processor=args.attention_processor)  # fmt: skip
    return evaluation


def judge_shapes(pipe, args) -> list[Path]:
    from training.judges.report import guidance_key
    from training.judges.shapes import run_evaluation, write_report

    call_kwargs = {"cross_attention_kwargs": {"scale": args.lora_scale}} if args.lora_scale is not None else None
    evaluation = run_evaluation(
        pipe, args.guidance, args.per_caption, args.steps, args.scheduler, args.seed, args.batch_size, strict=True,
        colors=args.colors, palette=args.palette, call_kwargs=call_kwargs, backgrounds=args.backgrounds,
        background_palette=args.background_palette,
    )
    model_name = str(args.model) + (f" + LoRA {args.lora}" if args.lora else "") + (
        f" at scale {args.lora_scale:g}" if args.lora_scale is not None else "")
    written = write_report(record_precision(evaluation, args), args.output_dir, model=model_name)
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
    return written


def use_scheduler(pipe, name: str | None) -> None:
    if name is not None:
        from pipelines.schedulers import make_scheduler

        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)


def judge_digits(pipe, args) -> list[Path]:
    from training.judges.digits import run_digits_evaluation, write_digits_report
    from training.judges.report import guidance_key

    use_scheduler(pipe, args.scheduler)
    evaluation = run_digits_evaluation(pipe, args.guidance, args.per_class, args.steps, args.seed,
                                       min(args.batch_size, 100), inpaint_per_class=args.inpaint_per_class)  # fmt: skip
    written = write_digits_report(record_precision(evaluation, args), args.output_dir, model=str(args.model))
    metrics = evaluation.metrics
    classifier = metrics["classifier"]
    print(f"classifier on {classifier['num_images']} held-out digits: {classifier['accuracy']:.1%}"
          f"; after the model's VAE: {metrics['autoencoder']['accuracy']:.1%} (chance {metrics['chance']:.0%})")
    print(f"{'guidance':>8}  {'class accuracy':>14}")
    for scale in metrics["settings"]["guidance_scales"]:
        print(f"{scale:>8g}  {metrics['generation'][guidance_key(scale)]['accuracy']:>14.3f}")
    inpainting = metrics["inpainting"]
    if inpainting["masks"]:
        print(f"in-painting {inpainting['num_images']} held-out digits (guidance {inpainting['guidance_scale']:g} with "
              "the caption):")  # fmt: skip
        print(f"{'mask':>14}  {'with caption':>12}  {'without':>7}  {'masked, not completed':>21}")
        for mask, r in inpainting["masks"].items():
            print(f"{mask:>14}  {r['with_caption']:>12.3f}  {r['without_caption']:>7.3f}  {r['masked_only']:>21.3f}")
    print(f"best guidance scale: {metrics['best_guidance_scale']:g} ({metrics['seconds']:.0f} s)")
    return written


def judge_emoji(pipe, args) -> list[Path]:
    from training.builtin import builtin_dataset_dir
    from training.config import TrainConfig, load_config
    from training.judges.emoji import run_emoji_evaluation, write_emoji_report
    from training.judges.report import guidance_key

    # The dataset as the model saw it: the record's emoji options (the default ones without a record) at the
    # pipeline's resolution; built into the cache on first use.
    overrides = [f"cache_dir={args.cache_dir}"] if args.cache_dir else []
    resolution = pipe.default_height_width()[1]
    if args.record is not None:
        config = load_config(Path(args.model) / "config.yaml", [*overrides, "dataset_name=emoji"])
    else:  # only the dataset keys matter: no model parts to check against each other
        config = TrainConfig(dataset_name="emoji", resolution=resolution, vae_config={}, unet_config={},
                             cache_dir=args.cache_dir)  # fmt: skip
    data_dir = builtin_dataset_dir(config)
    use_scheduler(pipe, args.scheduler)
    evaluation = run_emoji_evaluation(pipe, data_dir, args.guidance, args.num_captions, args.steps, args.seed,
                                      min(args.batch_size, 64))  # fmt: skip
    written = write_emoji_report(record_precision(evaluation, args), data_dir, args.output_dir, model=str(args.model))
    metrics = evaluation.metrics
    real, ceiling = metrics["reader"]["color_leave_one_out"], metrics["autoencoder"]
    chance = metrics["best_scores"]["retrieval"]
    print(f"colour reader on the real images (leave one out): {real['accuracy']:.1%} of {real['num_images']}; "
          f"retrieval among {metrics['settings']['gallery_size']} (chance top-1 {chance['chance_top1']:.2%}, top-5 "
          f"{chance['chance_top5']:.2%})")  # fmt: skip
    colour = ceiling["color"]["accuracy"] if ceiling["color"] else float("nan")
    print(f"after the model's VAE (the ceiling): colour {colour:.3f}, top-1 {ceiling['retrieval']['top1']:.3f}, "
          f"top-5 {ceiling['retrieval']['top5']:.3f}")
    print(f"{'guidance':>8}  {'colour':>6}  {'top-1':>6}  {'top-5':>6}")
    for scale in metrics["settings"]["guidance_scales"]:
        s = metrics["scores"][guidance_key(scale)]
        colour = s["color"]["accuracy"] if s["color"] else float("nan")
        print(f"{scale:>8g}  {colour:>6.3f}  {s['retrieval']['top1']:>6.3f}  {s['retrieval']['top5']:>6.3f}")
    print(f"best guidance scale (by top-5): {metrics['best_guidance_scale']:g} ({metrics['seconds']:.0f} s)")
    return written


if __name__ == "__main__":
    main()
