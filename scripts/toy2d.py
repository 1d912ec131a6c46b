"""Train a DDPM on 2-D toy data (the course's moons / swiss roll / S-curve demos) and save forward.png, reverse.png
and metrics.json (energy distance to fresh data next to the data-vs-data floor).

    python scripts/toy2d.py --dataset moons --output_dir out/moons

Bad arguments print one line to stderr and exit with code 2 before anything is written; the defaults are the
measured ones of docs/toy2d.md (about a minute per dataset on 2 CPU cores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from training.cli import OneLineParser  # noqa: E402
from training.course.toy2d import BETA_SCHEDULES, DATASETS, MAX_TIMESTEPS, MIN_TIMESTEPS, Toy2DConfig, run  # noqa: E402

PROG = "toy2d.py"




def main(argv: list[str] | None = None) -> int:
    defaults = Toy2DConfig()
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--output_dir", required=True, help="where forward.png, reverse.png, metrics.json go")
    parser.add_argument("--num_train_timesteps", type=int, default=defaults.num_train_timesteps,
                        help=f"T, {MIN_TIMESTEPS}–{MAX_TIMESTEPS} (default {defaults.num_train_timesteps})")
    parser.add_argument("--beta_schedule", default=defaults.beta_schedule,
                        help=f"one of {', '.join(BETA_SCHEDULES)} (default {defaults.beta_schedule})")
    parser.add_argument("--train_steps", type=int, default=defaults.train_steps)
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--num_samples", type=int, default=defaults.num_samples,
                        help="n: points a side of the distance, and per figure panel")
    parser.add_argument("--num_generated", type=int, default=defaults.num_generated,
                        help="generated points (>= n) that estimate the distance")
    parser.add_argument("--num_data", type=int, default=defaults.num_data,
                        help="fresh data points (>= n) that estimate the distance and the floor")
    parser.add_argument("--num_threads", type=int, default=defaults.num_threads)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no_progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)

    options = vars(args)
    options["progress"] = not options.pop("no_progress")
    try:
        config = Toy2DConfig(**options)
    except ValueError as error:
        parser.error(str(error))
    metrics = run(config)
    print(json.dumps({k: metrics[k] for k in ("dataset", "distance", "floor", "ratio", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
