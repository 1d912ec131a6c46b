"""Write an imagefolder or a built-in dataset as parquet shards, for `streaming: true` with `dataset_name: OUTPUT_DIR`.

    python scripts/make_shards.py data/my-imagefolder data/my-shards --max_shard_size 256MB --shuffle_seed 0
    python scripts/make_shards.py shapes data/shapes-shards --num_samples 4096 --resolution 32 --rows_per_shard 512
    python scripts/make_shards.py digits data/digits-shards --resolution 32 --rows_per_shard 256

SOURCE is an imagefolder (images plus metadata.jsonl, as `train_data_dir` takes), or `shapes`, `emoji` or `digits`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from training.cli import OneLineParser  # noqa: E402

BUILTIN = ("shapes", "emoji", "digits")


def main(argv=None) -> int:
    parser = OneLineParser(prog="make_shards.py", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="an imagefolder, or shapes / emoji / digits")
    parser.add_argument("output_dir", help="new or empty folder for the shards")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--rows_per_shard", type=int, help="rows in each shard")
    size.add_argument("--max_shard_size", help="about this many bytes of images per shard, e.g. 64MB")
    parser.add_argument("--shuffle_seed", type=int, help="write the rows in a permutation seeded by this")
    parser.add_argument("--num_samples", type=int, default=4096, help="shapes: how many")
    parser.add_argument("--resolution", type=int, default=32, help="shapes, emoji, digits: image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="shapes: which images (dataset_seed)")
    parser.add_argument("--cache_dir", help="emoji, digits: where they are built (cache_dir)")
    args = parser.parse_args(argv)
    if args.source not in BUILTIN and not Path(args.source).is_dir():
        parser.error(f"source: {args.source!r} is neither a folder nor one of {', '.join(BUILTIN)}.")
    if args.rows_per_shard is not None and args.rows_per_shard < 1:
        parser.error(f"--rows_per_shard: {args.rows_per_shard} must be ≥ 1.")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        parser.error(f"output_dir: {str(output_dir)!r} exists and is not an empty folder.")

    from training.shards import imagefolder_rows, parse_size, shapes_rows, write_shards  # after parsing: fast errors

    try:
        max_size = parse_size(args.max_shard_size) if args.max_shard_size else None
        if args.source == "shapes":
            count, row = shapes_rows(args.num_samples, args.resolution, args.seed)
        elif args.source in BUILTIN:
            from training.builtin import builtin_dataset_dir
            from training.config import load_config

            overrides = [f"dataset_name={args.source}", f"resolution={args.resolution}"]
            config = load_config(None, overrides + ([f"cache_dir={args.cache_dir}"] if args.cache_dir else []))
            count, row = imagefolder_rows(builtin_dataset_dir(config))
        else:
            count, row = imagefolder_rows(args.source)
        shards = write_shards(count, row, output_dir, args.rows_per_shard, max_size, args.shuffle_seed)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(f"Wrote {count} rows in {len(shards)} shard(s) to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
