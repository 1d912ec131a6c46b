"""Convert a LoRA file between diffusers' layout (what sculpt's training and diffusers' scripts write, what
`load_lora_weights` reads) and kohya's (what A1111, ComfyUI and kohya sd-scripts read).

    python scripts/export_lora.py outputs/lora-yellow --format kohya --out yellow_kohya.safetensors
    python scripts/export_lora.py some_kohya_lora.safetensors --format diffusers --out lora_folder --base MODEL

SOURCE is a .safetensors file or a folder holding pytorch_lora_weights.safetensors. kohya's file stores each layer's
α (from the source's LoRA metadata, so α ≠ rank keeps its strength); the diffusers folder stores one LoraConfig per
part. --base checks that the file fits that model's UNet and text encoder first. Bad arguments and files that do not
fit print one line to stderr and exit with code 2, before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from training.cli import OneLineParser  # noqa: E402
from training.cli import fail as _fail  # noqa: E402

PROG = "export_lora.py"


def fail(message: str) -> None:
    _fail(PROG, message)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a LoRA .safetensors file, or a folder with pytorch_lora_weights.safetensors")
    parser.add_argument("--format", required=True, choices=("kohya", "diffusers"), help="the layout to write")
    parser.add_argument("--out", required=True, help="kohya: the .safetensors file; diffusers: the folder")
    parser.add_argument("--base", default=None, help="a pipeline folder (or Hub id) the LoRA must fit")
    args = parser.parse_args(argv)
    source, out = Path(args.source).expanduser(), Path(args.out).expanduser()
    if not source.exists():
        fail(f"SOURCE: no such file or folder: {args.source}")
    if args.format == "kohya" and out.suffix != ".safetensors":
        fail(f"--out: {args.out!r} must end in .safetensors (kohya's LoRA is one file).")
    if args.format == "diffusers" and out.exists() and not out.is_dir():
        fail(f"--out: {args.out!r} exists and is not a folder (the diffusers layout is a folder).")
    if out.exists() and out.resolve() in (source.resolve(), (source / "pytorch_lora_weights.safetensors").resolve()):
        fail("--out: would overwrite SOURCE; choose another path.")

    from training.lora import convert_lora_file  # after the arguments: they fail fast, before torch loads

    base = None
    if args.base is not None:
        from pipelines import LatentDiffusionPipeline

        try:
            base = LatentDiffusionPipeline.from_pretrained(args.base)
        except Exception as error:  # noqa: BLE001 - any load failure is a bad --base argument to the user
            fail(f"--base: could not load {args.base!r}: {str(error).splitlines()[0] if str(error) else error}")
    try:
        written = convert_lora_file(source, args.format, out, base)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error).replace("`source`", "SOURCE").replace("`format`", "--format"))
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
