"""Write the built-in captioned-shapes dataset as an imagefolder (PNGs + metadata.jsonl with file_name and text),
loadable with `train_data_dir: DIR` or `datasets.load_dataset("imagefolder", data_dir=DIR)`.

    python scripts/make_shapes_dataset.py --output_dir data/shapes --num_samples 1000 --resolution 64 --seed 0
    python scripts/make_shapes_dataset.py --output_dir data/orange --num_samples 150 --resolution 32 --colors orange

--colors draws the shapes in other colours than the base grammar's six (e.g. orange, a concept to teach a LoRA).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from training.cli import OneLineParser  # noqa: E402


def main(argv=None) -> int:
    parser = OneLineParser(prog="make_shapes_dataset.py", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="new or empty folder to write into")
    parser.add_argument("--num_samples", type=int, required=True)
    parser.add_argument("--resolution", type=int, required=True, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same pixels")
    parser.add_argument("--colors", default=None, help="comma-separated colours (default: the base grammar's six)")
    args = parser.parse_args(argv)

    from training.builtin.shapes import make_shapes_dataset  # after parsing: bad flags fail fast
    from training.data import write_imagefolder

    output_dir = Path(args.output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        parser.error(f"--output_dir: {str(output_dir)!r} exists and is not an empty folder.")
    try:
        colors = [c.strip() for c in args.colors.split(",")] if args.colors else None
        dataset = make_shapes_dataset(args.num_samples, args.resolution, args.seed, colors)
    except ValueError as error:
        parser.error(str(error).replace("`", "--", 1).replace("`", "", 1))  # `num_samples` → --num_samples
    write_imagefolder(dataset, output_dir)
    print(f"Wrote {len(dataset)} images and metadata.jsonl to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
