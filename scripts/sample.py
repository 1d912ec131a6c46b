"""Sample images from a saved pipeline: text-to-image, or img2img with --image, or inpainting with --image --mask.

    python scripts/sample.py outputs/run --prompt "a red circle" --num_images 4 --out samples/grid.png
    python scripts/sample.py outputs/run --prompt "a blue square" --image in.png --strength 0.6 --out edit.png
    python scripts/sample.py outputs/run --prompt "a green circle" --image in.png --mask mask.png --out fill.png
    python scripts/sample.py outputs/quickstart/model --lora outputs/lora-yellow --lora_scale 0.8 \
        --prompt "a large red circle on a yellow background" --out yellow.png

--lora loads LoRA weights (a folder with pytorch_lora_weights.safetensors, a .safetensors file in diffusers' or kohya's
layout, or a Hub id) on top of MODEL; --lora_scale sets their strength for this run (0 is MODEL alone).
Writes <out>, the grid, and <out stem>_<i>.png per image; --save_intermediates adds <out stem>_filmstrip.png, one row
per image of the predicted clean image x̂_0 through the denoising. Image i uses seed --seed + i, so
`--seed K+i --num_images 1` reproduces it alone. Bad arguments print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from pipelines.loading import looks_like_path  # noqa: E402  (torch-free, like the two below)
from pipelines.schedulers import SCHEDULERS  # noqa: E402
from training.cli import OneLineParser  # noqa: E402
from training.cli import fail as _fail  # noqa: E402

PROG = "sample.py"


def fail(message: str) -> None:
    _fail(PROG, message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check everything that can be checked before torch is imported, so bad arguments fail fast."""
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a folder written by save_pretrained, or a Hub id")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative_prompt", default=None, help="replaces the unconditional prompt in guidance")
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="<= 1 turns guidance off")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=None, help="default: the model's own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=None, help="default: the model's (or --image's) size")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--image", default=None, help="start from this image (img2img, or inpainting with --mask)")
    parser.add_argument("--strength", type=float, default=None, help="(0, 1]; default 0.8 img2img, 1 inpainting")
    parser.add_argument("--mask", default=None, help="inpainting mask for --image: white = repaint, black = keep")
    parser.add_argument("--out", required=True, help="path of the grid PNG")
    parser.add_argument("--save_intermediates", action="store_true", help="also write a filmstrip of x̂_0")
    parser.add_argument("--lora", default=None, help="LoRA weights to load on MODEL: a folder, a .safetensors file or "
                        "a Hub id")
    parser.add_argument("--lora_scale", type=float, default=None, help="the LoRA's strength (default 1; 0 = MODEL)")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="also load pickled weights (*.bin), which can run code: only for a model you trust")
    args = parser.parse_args(argv)

    model = Path(args.model).expanduser()
    if model.exists() and not (model / "model_index.json").is_file():
        fail(f"MODEL: {args.model} has no model_index.json; pass a folder written by save_pretrained.")
    if not model.exists() and looks_like_path(args.model):
        fail(f"MODEL: no such folder: {args.model}")
    if args.num_images < 1:
        fail(f"--num_images: {args.num_images} must be >= 1.")
    if args.steps < 1:
        fail(f"--steps: {args.steps} must be >= 1.")
    if args.mask is not None and args.image is None:
        fail("--mask needs --image: the mask marks the part of --image to repaint.")
    if args.strength is not None and args.image is None:
        fail("--strength needs --image: it says how much of --image to re-generate.")
    if args.strength is not None and not 0 < args.strength <= 1:
        fail(f"--strength: {args.strength} must be in (0, 1].")
    if args.lora_scale is not None and args.lora is None:
        fail("--lora_scale needs --lora: it scales the LoRA weights that --lora loads.")
    if args.lora is not None and looks_like_path(args.lora) and not Path(args.lora).expanduser().exists():
        fail(f"--lora: no such file or folder: {args.lora}")
    for flag, path in (("--image", args.image), ("--mask", args.mask)):
        if path is not None and not Path(path).is_file():
            fail(f"{flag}: no such file: {path}")
    check_out(args.out)
    return args


def check_out(out: str) -> None:
    """`--out` must name an image format PIL can write, in a folder that can be created and written to, so that a
    long sampling run cannot end in a traceback when it saves."""
    import PIL.Image

    path = Path(out).expanduser()
    image_format = PIL.Image.registered_extensions().get(path.suffix.lower())
    try:  # the real test: some registered formats have no writer installed, or cannot write RGB
        PIL.Image.new("RGB", (1, 1)).save(io.BytesIO(), format=image_format)
    except (OSError, ValueError, KeyError):
        image_format = None
    if image_format is None:
        fail(f"--out: {out!r} does not end in an image format PIL can write ({path.suffix or 'no extension'}); "
             f"use .png (or .jpg, .webp, ...).")
    if path.is_dir():
        fail(f"--out: {out} is a folder; give the grid's file name, e.g. {path / ('grid' + path.suffix)}")
    folder = path.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # '.' or '/' at the latest
    if not existing.is_dir():
        fail(f"--out: cannot create the folder {folder}: {existing} is a file.")
    try:  # probe by writing: permission bits say nothing for root, or for /proc and read-only mounts
        if existing == folder:
            tempfile.TemporaryFile(dir=folder).close()
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as error:
        action = "write into" if existing == folder else "create"
        fail(f"--out: cannot {action} the folder {folder}: {error.strerror or error}.")


def read_image(flag: str, path: str, mode: str):
    """The image at `path` in `mode` ("RGB" for --image, "L" for --mask), or one line saying why it cannot be read."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            return image.convert(mode)
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        fail(f"{flag}: cannot read {path} as an image: {reason}")


def read_inputs(args: argparse.Namespace) -> tuple:
    """(image, mask) as PIL images (or None), read and checked against each other before any model loads."""
    image = read_image("--image", args.image, "RGB") if args.image is not None else None
    mask = read_image("--mask", args.mask, "L") if args.mask is not None else None
    if mask is not None and mask.size != image.size:
        fail(f"--mask: size {mask.width}x{mask.height} differs from --image's {image.width}x{image.height}; "
             f"the mask marks pixels of the image, so they must be the same size.")
    return image, mask


def load_lora(pipe, lora: str) -> None:
    """`pipe.load_lora_weights` for --lora: a folder, a file (its folder and `weight_name`) or a Hub id; a file that does
    not fit MODEL (pipelines/lora.py) or cannot be read is one line, exit 2."""
    path = Path(lora).expanduser()
    kwargs = {"weight_name": path.name} if path.is_file() else {}
    try:
        pipe.load_lora_weights(str(path.parent if path.is_file() else lora), **kwargs)
    except ImportError as error:  # diffusers' loader without peft
        fail(f"--lora: loading LoRA weights needs peft: pip install -e '.[lora]' ({error})")
    except (ValueError, OSError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        fail(f"--lora: {reason.replace('`pretrained_model_name_or_path_or_dict`: ', '')}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    image, mask = read_inputs(args)
    import torch

    from pipelines import (
        LatentDiffusionImg2ImgPipeline,
        LatentDiffusionInpaintPipeline,
        LatentDiffusionPipeline,
    )
    from pipelines.schedulers import make_scheduler
    from pipelines.utils import make_grid, save_images

    try:
        pipe = LatentDiffusionPipeline.from_pretrained(args.model, use_safetensors=not args.allow_pickle)
    except Exception as error:  # noqa: BLE001 - any load failure is a bad MODEL argument to the user
        reason = str(error).splitlines()[0] if str(error) else str(type(error))
        if "use_safetensors=False" in reason:  # the library's opt-in, as this script spells it
            reason = reason.replace("pass use_safetensors=False", "pass --allow_pickle")
        fail(f"MODEL: could not load {args.model!r}: {reason}")
    if args.scheduler is not None:
        pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    if args.lora is not None:
        load_lora(pipe, args.lora)

    kwargs = {}
    if args.lora_scale is not None:
        kwargs["cross_attention_kwargs"] = {"scale": args.lora_scale}
    if image is not None:
        pipeline_class = LatentDiffusionInpaintPipeline if mask is not None else LatentDiffusionImg2ImgPipeline
        pipe = pipeline_class(**pipe.components)
        kwargs["image"] = image
        if mask is not None:
            kwargs["mask_image"] = mask
        if args.strength is not None:
            kwargs["strength"] = args.strength

    frames = []  # x̂_0 latents every few steps, decoded after sampling
    every = max(1, args.steps // 8)

    def keep_preview(pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        if step % every == 0 or step == pipeline.num_timesteps - 1:
            frames.append(callback_kwargs["pred_original_sample"])
        return {}

    if args.save_intermediates:
        kwargs["callback_on_step_end"] = keep_preview
        kwargs["callback_on_step_end_tensor_inputs"] = ["pred_original_sample"]
    try:
        images = pipe(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            num_images_per_prompt=args.num_images,
            guidance_scale=args.guidance_scale,
            num_inference_steps=args.steps,
            height=args.height,
            width=args.width,
            generator=[torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)],
            **kwargs,
        ).images
    except ValueError as error:  # the pipeline checks every argument before sampling
        fail(str(error))

    out = Path(args.out)
    written = save_images(images, out)
    if args.save_intermediates and all(frame is not None for frame in frames):
        decoded = [pipe.latents_to_images(frame, output_type="pil") for frame in frames]
        strip = [decoded[f][i] for i in range(len(images)) for f in range(len(frames))]  # one row per image
        written.append(out.with_name(f"{out.stem}_filmstrip.png"))
        make_grid(strip, rows=len(images)).save(written[-1])
    elif args.save_intermediates:
        print(f"note: {type(pipe.scheduler).__name__} gives no x̂_0 preview; no filmstrip written", file=sys.stderr)
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
