"""sculpt side by side with diffusers' own training script and pipeline, on identical parts and data.

    python scripts/bench_vs_diffusers.py --diffusers_script ../shared/benchmarks/diffusers_train_text_to_image.py \\
        [--config configs/shapes.yaml] [--steps 30] [--warmup 5] [--batch 64] [--repeats 2] [--processes 1,2] \\
        [--threads 1] [--output_dir outputs/bench_vs_diffusers] [--skip_sampling] [--skip_cached] [key=value ...]

1. Builds the config's architectures (random weights) into one SD-format folder and the built-in shapes at the
   config's resolution into one imagefolder (training/bench/parts.py); key=value overrides change the config as they do
   for scripts/train.py.
2. Trains on them with diffusers' `train_text_to_image.py` (its path is an argument: it is not part of sculpt) and
   with sculpt's trainer, same batch, steps, learning rate, EMA, precision (training/bench/runs.py says what is set on
   each side), interleaved diffusers / sculpt / sculpt with cached latents and text, `--repeats` times, for each
   `--processes` count (several = one DDP group; on CPU gloo), `--threads` threads per process. After one unmeasured
   priming run of each tool (datasets' cache, the OS file cache).
3. Measures per run, from optimizer-step timestamps taken by the same hook in both tools: steady-state images/s
   after `--warmup` steps, start-up (launch to the end of the first step), peak RSS summed over the processes.
4. Samples with LatentDiffusionPipeline (our scheduler and diffusers') and StableDiffusionPipeline on the same
   components: seconds per image, ratio, max |difference| (training/bench/sampling.py).
5. The floor: FLOPs per training image over this machine's measured matmul/convolution rate (training/bench/floor.py).
6. Prints the tables and writes them to <output_dir>/bench.md and bench.json, with the command.

diffusers' script needs torchvision: by default it runs in a throwaway venv under <output_dir>
(training/bench/diffusers_env.py explains what is installed and guarded there), or pass --diffusers_python. Bad arguments
print one line to stderr and exit with code 2 before any work; a run that fails prints one line and exits with 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

from training.cli import (
    OneLineParser,  # noqa: E402  (torch-free: bad arguments fail first)
    check_benchmark_arguments,  # noqa: E402
)
from training.cli import fail as _fail  # noqa: E402

MARKER = ".sculpt-bench"  # in an output_dir this benchmark made, so that it may replace its contents
DIFFUSERS_PREDICTION_TYPES = ("epsilon", "v_prediction")  # what diffusers' script computes a target for


PROG = "bench_vs_diffusers.py"


def fail(message: str, code: int = 2) -> None:
    _fail(PROG, message, code)


def parse_processes(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        fail(f"--processes: {text!r} is not a comma-separated list of process counts, e.g. 1,2.")
    if any(count < 1 for count in counts) or len(set(counts)) != len(counts):
        fail(f"--processes: {text!r} must list distinct counts >= 1, e.g. 1,2.")
    return counts


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, object]:
    """The arguments and the resolved sculpt config, everything checked before any work."""
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--diffusers_script", help="diffusers' examples/text_to_image/train_text_to_image.py")
    parser.add_argument("--config", default=str(ROOT / "configs" / "shapes.yaml"), help="architectures and settings")
    parser.add_argument("--steps", type=int, default=30, help="measured optimizer steps, after the warm-up ones")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the steady state is timed")
    parser.add_argument("--batch", type=int, default=64, help="images per optimizer step, over all processes")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions of every run")
    parser.add_argument("--processes", default="1,2", help="process counts to compare, e.g. 1,2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"), default="no", help="both tools")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="images in the dataset (default: the config's num_shapes_samples); rounded down to a "
                             "multiple of --batch")  # fmt: skip
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "bench_vs_diffusers"))
    parser.add_argument("--diffusers_python", default=None,
                        help="a Python that imports torchvision.transforms and diffusers (default: a throwaway venv)")
    parser.add_argument("--skip_cached", action="store_true", help="no rows for sculpt with cached latents + text")
    parser.add_argument("--skip_sampling", action="store_true")
    parser.add_argument("--sample_steps", type=int, default=50)
    parser.add_argument("--sample_batch", type=int, default=8)
    parser.add_argument("--guidance_scale", type=float, default=3.0)
    parser.add_argument("--no_prime", action="store_true", help="skip the unmeasured priming run of each tool")
    parser.add_argument("--keep_outputs", action="store_true", help="keep each run's trained model folder")
    parser.add_argument("--report_only", action="store_true",
                        help="no runs: recompute the tables of <output_dir>/bench.json from its runs' stamps")
    parser.add_argument("--run_timeout", type=float, default=3600, help="seconds before a run is stopped")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for scripts/train.py")
    args = parser.parse_args(argv)
    if args.report_only:
        if not (Path(args.output_dir).expanduser() / "bench.json").is_file():
            fail(f"--report_only: {args.output_dir} has no bench.json; run the benchmark into it first.")
        return args, None

    if args.diffusers_script is None:
        fail("--diffusers_script is required: the path of diffusers' examples/text_to_image/train_text_to_image.py.")
    script = Path(args.diffusers_script).expanduser()
    if not script.is_file():
        fail(f"--diffusers_script: no such file: {args.diffusers_script}")
    for flag in ("steps", "warmup", "batch", "repeats", "threads", "sample_steps", "sample_batch"):
        if getattr(args, flag) < 1:
            fail(f"--{flag}: {getattr(args, flag)} must be >= 1.")
    if args.run_timeout <= 0:
        fail(f"--run_timeout: {args.run_timeout} must be > 0.")
    args.processes = parse_processes(args.processes)
    for count in args.processes:
        if args.batch % count:
            fail(f"--batch: {args.batch} must be divisible by every --processes count ({count} is not a divisor); "
                 f"it is the global batch, split evenly over the processes.")  # fmt: skip
    if args.diffusers_python is not None and not os.access(args.diffusers_python, os.X_OK):
        fail(f"--diffusers_python: {args.diffusers_python} is not an executable file.")
    output_dir = check_benchmark_arguments(PROG, args.overrides, args.output_dir, MARKER)

    from training.bench.parts import dataset_size, from_scratch
    from training.bench.runs import sculpt_overrides
    from training.cli import USER_ERRORS
    from training.config import load_config

    # The config as the parts are built from it, and as sculpt's runs will resolve it (uncached and cached): each
    # must load, so that a bad key or a combination sculpt refuses is this one line rather than a failed run.
    output_dir = output_dir.resolve()
    try:
        config = load_config(args.config, args.overrides)
        from_scratch(config)
        resolved = {}
        for cached in (False, True):
            forced = sculpt_overrides(output_dir / "parts" / "model", output_dir / "parts" / "data", output_dir / "run",
                                      output_dir / "cache", args.processes[0], args.batch, args.warmup + args.steps,
                                      args.mixed_precision, cached)  # fmt: skip
            resolved[cached] = load_config(args.config, [*args.overrides, *forced])
    except USER_ERRORS as error:
        fail(f"--config: {error}")
    if config.prediction_type not in DIFFUSERS_PREDICTION_TYPES:
        fail(f"--config: `prediction_type`: {config.prediction_type!r} has no counterpart in diffusers' script, which "
             f"trains {' or '.join(DIFFUSERS_PREDICTION_TYPES)}.")  # fmt: skip
    if args.num_samples is not None and args.num_samples < 1:
        fail(f"--num_samples: {args.num_samples} must be >= 1.")
    if dataset_size(config, args.batch, args.num_samples) < args.batch:
        fail(f"--num_samples: {args.num_samples or config.num_shapes_samples} images are fewer than one --batch "
             f"of {args.batch}.")  # fmt: skip
    args.resolved = resolved[False]  # what diffusers' flags are read from
    return args, config


def shown(path: str) -> str:
    """A path inside the checkout as relative to it, as the docs write it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "scripts/bench_vs_diffusers.py", *argv])


def report_again(output_dir: Path, argv: list[str]) -> None:
    """--report_only: the runs of bench.json measured again from their stamps by the current code, and the tables
    rewritten; sampling, the floor, the header and the notes are the run's own."""
    from training.bench import report, runs

    bench = json.loads((output_dir / "bench.json").read_text())
    results = []
    for saved in bench["runs"]:
        ranks = runs.read_stamps(Path(saved["log"]).parent / "stamps")
        launched = max(r["wall"][0] for r in ranks) - saved["startup_s"]
        measured = runs.summarize(ranks, bench["args"]["warmup"], bench["args"]["batch"], launched,
                                  launched + saved["wall_s"])  # fmt: skip
        fields = {f.name for f in dataclasses.fields(runs.RunResult)}
        results.append(runs.RunResult(**{k: v for k, v in {**saved, **measured}.items() if k in fields}))
    precision = "fp32" if bench["args"]["mixed_precision"] == "no" else "bf16"
    rows = report.training_rows(results, bench["floor"], precision)
    notes = [n for n in bench["notes"] if not n.startswith("Tables recomputed")]
    notes.append(f"Tables recomputed from the same runs' stamps by `{command_line(argv)}`.")
    text = report.markdown(bench["header"], rows, bench["sampling"], bench["floor"], notes)
    bench.update(runs=[r.to_dict() for r in results], training=rows, notes=notes)
    (output_dir / "bench.json").write_text(json.dumps(bench, indent=1, default=str))
    (output_dir / "bench.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args, config = parse_args(argv)
    if args.report_only:
        return report_again(Path(args.output_dir).expanduser().resolve(), argv)
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # this process's own measurements (sampling, the floor)
    try:
        return measure(args, config, argv)
    finally:
        torch.set_num_threads(previous)  # run in-process (the tests), the caller keeps its own thread count


def measure(args, config, argv: list[str]) -> None:
    import accelerate
    import diffusers
    import torch
    from tqdm.auto import tqdm

    from training.bench import parts, report, runs
    from training.bench.diffusers_env import make_venv
    from training.bench.floor import floor as measure_floor

    output_dir = Path(args.output_dir).expanduser().resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MARKER).write_text("made by scripts/bench_vs_diffusers.py; its contents are replaced on a rerun\n")
    cache_dir = output_dir / "cache"
    notes = []

    # 1. The identical inputs.
    num_samples = parts.dataset_size(config, args.batch, args.num_samples)
    print(f"building the parts and {num_samples} shapes images into {output_dir / 'parts'}")
    model_dir, data_dir = parts.build_parts(config, output_dir / "parts", num_samples)

    # 2. A Python for diffusers' script.
    try:
        if args.diffusers_python:
            diffusers_python = os.path.abspath(args.diffusers_python)  # the runs start in folders of their own
            notes.append(f"diffusers' script ran with --diffusers_python {diffusers_python}.")
        else:
            print("making the venv for diffusers' script (torchvision) ...")
            diffusers_python, note = make_venv(output_dir / "diffusers-venv")
            notes.append(note)
    except RuntimeError as error:
        fail(str(error), code=1)
    print(notes[-1])

    # 3. The runs: priming, then interleaved repeats.
    tools = ["diffusers", "sculpt"] + ([] if args.skip_cached else ["sculpt_cached"])
    plan = [] if args.no_prime else [(tool, 1, 0, args.warmup + 1) for tool in ("diffusers", "sculpt")]
    plan += [(tool, p, r, args.warmup + args.steps) for p in args.processes for r in range(1, args.repeats + 1)
             for tool in tools]  # fmt: skip
    results = []
    for tool, processes, repeat, total_steps in tqdm(plan, desc="runs"):
        run_dir = output_dir / "runs" / f"{tool}-p{processes}-r{repeat}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        sculpt = tool != "diffusers"
        overrides = runs.sculpt_overrides(model_dir, data_dir, run_dir / "output", cache_dir, processes, args.batch,
                                          total_steps, args.mixed_precision, cached=tool == "sculpt_cached")
        if sculpt:
            command = [*runs.launch_command(sys.executable, processes, args.mixed_precision),
                       str(ROOT / "scripts" / "train.py"), "--config", str(Path(args.config).resolve()),
                       *args.overrides, *overrides]  # fmt: skip
        else:
            command = [*runs.launch_command(diffusers_python, processes, args.mixed_precision),
                       str(Path(args.diffusers_script).resolve()),
                       *runs.diffusers_arguments(args.resolved, model_dir, data_dir, run_dir / "output", cache_dir,
                                                 processes, args.batch, total_steps)]  # fmt: skip
        env = runs.launch_env(run_dir / "stamps", args.threads, cache_dir, sculpt=sculpt)
        try:
            result = runs.run(tool, command, env, run_dir, processes, repeat, args.warmup, args.batch,
                              args.run_timeout)  # fmt: skip
        except RuntimeError as error:
            fail(f"{tool}, {processes} process(es), repeat {repeat}: {error}", code=1)
        results.append(result)
        if not args.keep_outputs:  # the trained pipelines are not measured; at SD size they are GBs per run
            shutil.rmtree(run_dir / "output", ignore_errors=True)
        tqdm.write(f"{runs.TOOLS[tool]:32s} processes {processes} {'prime' if repeat == 0 else f'repeat {repeat}'}: "
                   f"{result.images_per_s:7.1f} images/s, start-up {result.startup_s:5.1f} s, "
                   f"peak RSS {result.peak_rss_mib:6.0f} MiB")  # fmt: skip

    # 4. Sampling, 5. the floor.
    sampling = None
    if not args.skip_sampling:
        from training.bench.sampling import bench_sampling
        from training.builtin.shapes import make_shapes_dataset
        from training.data import all_captions

        captions = sorted(set(all_captions(make_shapes_dataset(num_samples, config.resolution, config.dataset_seed))))
        prompts = [captions[i * len(captions) // args.sample_batch] for i in range(args.sample_batch)]
        sampling = bench_sampling(model_dir, prompts, args.sample_steps, args.guidance_scale, args.repeats)
    print("measuring the floor (FLOPs per image, matmul and convolution rates) ...")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    floor = measure_floor(model_dir, config.resolution, device)

    # 6. The tables.
    precision = "fp32" if args.mixed_precision == "no" else "bf16"
    rows = report.training_rows(results, floor, precision)
    loads = [value for r in results for value in (r.load_before, r.load_after)]
    header = [
        "## sculpt vs diffusers", "", "```bash", command_line(argv), "```", "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
        + f"; torch {torch.__version__}, diffusers {diffusers.__version__}, accelerate "
        f"{accelerate.__version__}. Config {shown(args.config)} ({' '.join(args.overrides) or 'as is'}), "
        f"{config.resolution} px, {num_samples} shapes images, batch {args.batch} per step over all processes, "
        f"{args.warmup} warm-up + {args.steps} timed steps, mixed precision {args.mixed_precision}, "
        f"{args.threads} thread{'s' if args.threads > 1 else ''} per process, {args.repeats} interleaved repeats. "
        f"1-minute load average during the runs: {min(loads):.1f}–{max(loads):.1f}.",
    ]  # fmt: skip
    notes += [
        "Same on both sides: " + ", ".join(f"{k}={v}" for k, v in runs.SHARED_SETTINGS.items()
                                           if k not in ("overwrite_output_dir", "resume_from_checkpoint")) + ".",
        "images/s: the global batch over the mean time per optimizer step after the warm-up (slowest rank); start-up: "
        "launching `accelerate launch` to the end of the first optimizer step; peak RSS: summed over the training "
        "processes; × diffusers: per repeat, against diffusers' run of the same repeat; fraction of floor: median "
        f"images/s over processes × the {precision} UNet-only floor.",
    ]  # fmt: skip
    if not torch.cuda.is_available():
        notes.append("ACCELERATE_USE_CPU=true for every launch: without it accelerate runs diffusers' script with "
                     "--multi_gpu on a CPU machine as independent processes, not one gloo DDP group.")
    text = report.markdown(header, rows, sampling, floor, notes)
    (output_dir / "bench.md").write_text(text)
    (output_dir / "bench.json").write_text(json.dumps({
        "command": command_line(argv), "args": {k: v for k, v in vars(args).items() if k != "resolved"},
        "num_samples": num_samples,
        "runs": [r.to_dict() for r in results], "training": rows, "sampling": sampling, "floor": floor,
        "header": header, "notes": notes,
    }, indent=1, default=str))  # fmt: skip
    print(text)
    print(f"wrote {output_dir / 'bench.md'} and {output_dir / 'bench.json'}")


if __name__ == "__main__":
    main()
