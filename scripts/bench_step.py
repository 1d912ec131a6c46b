"""The bare UNet training step (bf16 autocast, SDPA, fused AdamW), eager and under torch.compile, on the UNet of a
benchmark's SD-format folder; optionally next to the trainers' rows of that benchmark's bench.json.

    python scripts/bench_step.py --model outputs/bench_gpu/parts/model [--batch 16] [--steps 15] [--warmup 3] \\
        [--mixed_precision bf16] [--compile no,yes] [--against outputs/bench_gpu/bench.json] [--output step.json]

training/bench/step.py says what one step is. Bad arguments print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`


from training.cli import OneLineParser  # noqa: E402  (torch-free: bad arguments fail first)
from training.cli import fail as _fail  # noqa: E402

PROG = "bench_step.py"


def fail(message: str) -> None:
    _fail(PROG, message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="an SD-format folder (bench_vs_diffusers.py's parts/model)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 2 with torch.compile)")
    parser.add_argument("--mixed_precision", choices=("no", "bf16"), default="bf16")
    parser.add_argument("--compile", default="no,yes", help="which modes: no, yes, or no,yes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    parser.add_argument("--against", default=None, help="a bench.json whose 1-process trainer rows to compare with")
    parser.add_argument("--output", default=None, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if not (Path(args.model) / "unet" / "config.json").is_file():
        fail(f"--model: {args.model} has no unet/config.json; pass an SD-format folder, e.g. <bench>/parts/model.")
    for flag in ("batch", "steps", "warmup"):
        if getattr(args, flag) < 1:
            fail(f"--{flag}: {getattr(args, flag)} must be >= 1.")
    if args.threads is not None and args.threads < 1:
        fail(f"--threads: {args.threads} must be >= 1.")
    modes = args.compile.split(",")
    if not modes or any(mode not in ("no", "yes") for mode in modes) or len(set(modes)) != len(modes):
        fail(f"--compile: {args.compile!r} must be no, yes or no,yes.")
    args.compile = [mode == "yes" for mode in modes]
    if any(args.compile) and args.warmup < 2:
        fail(f"--warmup: {args.warmup} must be >= 2 with torch.compile (the first steps compile).")
    if args.against is not None:
        try:
            bench = json.loads(Path(args.against).read_text())
            rows, bench_batch = bench["training"], bench["args"]["batch"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            fail(f"--against: cannot read the training rows of {args.against}: {error}")
        if bench_batch != args.batch:
            fail(f"--batch: {args.batch} differs from the --batch {bench_batch} of {args.against}; images/s compare "
                 f"only at the same batch.")
        args.diffusers = next((r for r in rows if r["tool"] == "diffusers" and r["processes"] == 1), None)
        if args.diffusers is None:
            fail(f"--against: {args.against} has no 1-process row for diffusers' trainer.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from training.bench.step import bench_step

    previous = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        measure(args, bench_step)
    finally:
        torch.set_num_threads(previous)  # run in-process (the tests), the caller keeps its own thread count


def measure(args, bench_step) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    diffusers = args.diffusers if args.against is not None else None
    head = "| step | images/s | first step s | peak GPU MiB |" + (" × diffusers' trainer |" if diffusers else "")
    print(f"### The bare UNet step ({device}, batch {args.batch}, {args.mixed_precision}, fused AdamW, "
          f"{args.warmup} warm-up + {args.steps} timed steps)\n\n{head}\n|" + " --- |" * (head.count("|") - 1))
    results = []
    for compiled in args.compile:  # each row is printed and saved as soon as it is measured
        result = bench_step(args.model, args.batch, args.steps, args.warmup, args.mixed_precision, compiled, device)
        results.append(result)
        line = (f"| bare step, {result['mode']} ({', '.join(result['attention'])}) | {result['images_per_s']:.1f} | "
                f"{result['first_step_s']:.1f} | {result['peak_gpu_mib']:.0f} |")  # fmt: skip
        if diffusers:
            line += f" {result['images_per_s'] / diffusers['images_per_s'][0]:.2f} |"
        print(line, flush=True)
        if args.output:
            Path(args.output).write_text(json.dumps({"results": results, "against": args.against}, indent=1))
        if device == "cuda":
            torch.cuda.empty_cache()
    if diffusers:
        print(f"\n(diffusers' trainer, 1 process, same batch: {diffusers['images_per_s'][0]:.1f} images/s, the median "
              f"of its runs in {args.against})")


if __name__ == "__main__":
    main()
