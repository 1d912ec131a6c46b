"""The bare UNet training step (bf16 autocast, SDPA, fused AdamW), eager and under torch.compile, on the UNet of a
benchmark's SD-format folder; optionally next to the trainers' rows of that benchmark's bench.json.

    python scripts/bench_step.py --model outputs/bench_gpu/parts/model [--batch 16] [--steps 15] [--warmup 3] \\
        [--mixed_precision bf16] [--compile no,yes] [--against outputs/bench_gpu/bench.json] [--output step.json]

The candidates of a faster step side by side, interleaved, on any folder with a unet/ (a pipeline folder too):

    python scripts/bench_step.py --model outputs/quickstart/model --batch 32 --threads 1 --compile no \\
        --mixed_precision no,bf16 --channels_last no,yes --attention sdpa,classic --repeats 3 --profile 5

Every combination of the listed values is one variant; `--repeats` runs all of them that many times, interleaved,
and the last table gives each variant's median (min–max) and its ratio to the first variant. `--profile N` adds
torch.profiler's top ops of N more steps of the first variant.

training/bench/step.py says what one step is. Bad arguments print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`


from training.cli import ATTENTION_PROCESSORS, OneLineParser  # noqa: E402  (torch-free: bad arguments fail first)
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
    parser.add_argument("--mixed_precision", default="bf16", help="no, bf16, or no,bf16")
    parser.add_argument("--compile", default="no,yes", help="which modes: no, yes, or no,yes")
    parser.add_argument("--channels_last", default="no", help="no, yes, or no,yes")
    parser.add_argument("--attention", default="sdpa", help="sdpa (diffusers' default processor), classic "
                        "(AttnProcessor), or sdpa,classic")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of every variant")
    parser.add_argument("--profile", type=int, default=0, help="steps of the first variant to profile (0: none)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    parser.add_argument("--against", default=None, help="a bench.json whose 1-process trainer rows to compare with")
    parser.add_argument("--output", default=None, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if not (Path(args.model) / "unet" / "config.json").is_file():
        fail(f"--model: {args.model} has no unet/config.json; pass an SD-format folder, e.g. <bench>/parts/model.")
    for flag in ("batch", "steps", "warmup", "repeats"):
        if getattr(args, flag) < 1:
            fail(f"--{flag}: {getattr(args, flag)} must be >= 1.")
    if args.threads is not None and args.threads < 1:
        fail(f"--threads: {args.threads} must be >= 1.")
    if args.profile < 0:
        fail(f"--profile: {args.profile} must be >= 0 (steps to profile).")
    args.mixed_precision = choices("mixed_precision", args.mixed_precision, ("no", "bf16"))
    args.compile = [mode == "yes" for mode in choices("compile", args.compile, ("no", "yes"))]
    args.channels_last = [mode == "yes" for mode in choices("channels_last", args.channels_last, ("no", "yes"))]
    args.attention = choices("attention", args.attention, ATTENTION_PROCESSORS)
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


def choices(flag: str, value: str, allowed: tuple[str, str]) -> list[str]:
    """`value`'s comma-separated entries, each one of `allowed` and none twice; otherwise the one-line error."""
    entries = value.split(",")
    if any(entry not in allowed for entry in entries) or len(set(entries)) != len(entries):
        fail(f"--{flag}: {value!r} must be {allowed[0]}, {allowed[1]} or {allowed[0]},{allowed[1]}.")
    return entries


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from training.bench.step import bench_step

    from training.run import compiled_autocast_problem

    problem = compiled_autocast_problem("inductor" if any(args.compile) else "no",
                                        "bf16" if "bf16" in args.mixed_precision else "no",
                                        "cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
    if problem:
        print(f"note: {problem}: a compiled bf16 row here times another computation than eager's, not the same step "
              f"faster.")
    previous = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        measure(args, bench_step)
    finally:
        torch.set_num_threads(previous)  # run in-process (the tests), the caller keeps its own thread count


def measure(args, bench_step) -> None:
    import itertools
    import statistics

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    diffusers = args.diffusers if args.against is not None else None
    variants = list(itertools.product(args.mixed_precision, args.compile, args.channels_last, args.attention))
    head = "| step | images/s | first step s | peak GPU MiB |" + (" × diffusers' trainer |" if diffusers else "")
    precision = args.mixed_precision[0] if len(args.mixed_precision) == 1 else "/".join(args.mixed_precision)
    print(f"### The bare UNet step ({device}, batch {args.batch}, {precision}, fused AdamW, "
          f"{args.warmup} warm-up + {args.steps} timed steps)\n\n{head}\n|" + " --- |" * (head.count("|") - 1))
    results = []
    for repeat, (mixed, compiled, channels_last, attention) in itertools.product(range(args.repeats), variants):
        profile = 0 if results else args.profile  # the first variant's first run
        result = bench_step(args.model, args.batch, args.steps, args.warmup, mixed, compiled, device,
                            channels_last=channels_last, attention=attention, profile_steps=profile)  # fmt: skip
        result["variant"] = label(result, len(args.mixed_precision) > 1)
        result["repeat"] = repeat
        results.append(result)  # each row is printed and saved as soon as it is measured
        line = (f"| {result['variant']}{f', run {repeat + 1}' if args.repeats > 1 else ''} | "
                f"{result['images_per_s']:.1f} | {result['first_step_s']:.1f} | {result['peak_gpu_mib']:.0f} |")
        if diffusers:
            line += f" {result['images_per_s'] / diffusers['images_per_s'][0]:.2f} |"
        print(line, flush=True)
        if args.output:
            Path(args.output).write_text(json.dumps({"results": results, "against": args.against}, indent=1))
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.repeats > 1 or len(variants) > 1:
        by_variant = {}
        for result in results:
            by_variant.setdefault(result["variant"], []).append(result["images_per_s"])
        first = statistics.median(next(iter(by_variant.values())))
        print(f"\n| variant | images/s: median (min–max) of {args.repeats} | × the first variant |\n| --- | --- | --- |")
        for variant, rates in by_variant.items():
            print(f"| {variant} | {statistics.median(rates):.1f} ({min(rates):.1f}–{max(rates):.1f}) | "
                  f"{statistics.median(rates) / first:.2f} |")
    if results and "profile" in results[0]:
        print(f"\ntorch.profiler, {args.profile} steps of {results[0]['variant']}, by self time:\n\n```\n"
              f"{results[0]['profile'].rstrip()}\n```")
    if diffusers:
        print(f"\n(diffusers' trainer, 1 process, same batch: {diffusers['images_per_s'][0]:.1f} images/s, the median "
              f"of its runs in {args.against})")


def label(result: dict, with_precision: bool) -> str:
    """"bare step, eager (AttnProcessor2_0)", with the precision and channels_last named when they are not the
    default row's."""
    precision = {"no": "fp32"}.get(result["precision"], result["precision"])
    extras = ([precision] if with_precision else []) + (["channels_last"] if result["channels_last"] else [])
    return f"bare step, {', '.join([result['mode'], *extras])} ({', '.join(result['attention'])})"


if __name__ == "__main__":
    main()
