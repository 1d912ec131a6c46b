"""Build the disk latent cache a training run reads (`cache_latents: true`, `latent_cache: disk`), before training:
each process encodes its share of the shards, a run killed midway builds only what is missing when started again,
and `--verify` checks every row and rebuilds damaged shards.

    accelerate launch --multi_gpu --num_processes 2 scripts/cache_latents.py --config configs/tiny.yaml [key=value ...]

Training with the same config (and `cache_latents=true latent_cache=disk`) then finds it; other settings get their
own cache (training/latent_cache.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.cli import OneLineParser, overrides_of  # noqa: E402


def main(argv=None) -> int:
    parser = OneLineParser(prog="cache_latents.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the training run's YAML config")
    parser.add_argument("--rows_per_shard", type=int, help="rows per cache shard (a new cache; default 256)")
    parser.add_argument("--verify", action="store_true", help="check every row's CRC, rebuild damaged shards")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    args, rest = parser.parse_known_args(argv)
    overrides = overrides_of(parser, rest)
    if args.rows_per_shard is not None and args.rows_per_shard < 1:
        parser.error(f"--rows_per_shard: {args.rows_per_shard} must be ≥ 1.")

    from training.config import load_config  # after parsing: bad flags fail fast
    from training.errors import USER_ERRORS, TrainingError

    try:
        config = load_config(args.config, ["cache_latents=true", "latent_cache=disk", *overrides])
        from training.latent_cache import cache_for_config

        cache = cache_for_config(config, rows_per_shard=args.rows_per_shard, verify=args.verify)
    except (*USER_ERRORS, TrainingError) as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, TrainingError) else 2
    if cache is not None:
        print(f"Latent cache: {cache.folder} ({len(cache)} rows in {cache.manifest['shards']} shard(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
