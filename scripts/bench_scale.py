"""Peak memory and speed of sculpt's data paths as the dataset grows (issue 14's table in docs/scale.md).

    python scripts/bench_scale.py [--config configs/tiny.yaml] [--sizes 4096,16384,65536] [--batch 64] [--steps 20] \\
        [--warmup 5] [--threads 1] [--variants in_memory,memory_cache,disk_cache,streaming,streaming_disk_cache] \\
        [--multinode] [--output_dir outputs/bench_scale] [key=value ...]

For every size it builds the config's architectures (random weights, one SD-format folder) and that many built-in
shapes images (one imagefolder, and the same rows as parquet shards), then trains `--warmup` + `--steps` optimizer
steps with each data path in turn (VARIANTS), one process each, and reads from the same step stamps as
scripts/bench_vs_diffusers.py (training/bench/runs.py): steady-state images/s, start-up (launch to the end of the
first step: loading the data and building any cache count here), and the process's peak RSS, which is where a path
that holds the dataset in memory shows itself. The streamed rows' images/s are also given as a ratio to the
map-style (in-memory) run of the same size.

--multinode adds, on the first size: 2 "machines" × 1 process on loopback (two launches, gloo) against 1 machine ×
2 processes, map-style without a cache: images/s and wall time of each, and whether their final UNets are identical.

Bad arguments print one line to stderr and exit with code 2 before any work; a run that fails prints one line and
exits with 1. The tables go to <output_dir>/bench.md and bench.json, with the command.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
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

PROG = "bench_scale.py"
MARKER = ".sculpt-bench-scale"  # in an output_dir this benchmark made, so that it may replace its contents
CACHED = {"cache_latents": "true", "cache_text_embeddings": "true"}
STREAMED = {"streaming": "true", "train_data_dir": "null"}  # dataset_name: the shards folder, set per size
# name: (what the table calls it, the overrides on top of training/bench/runs.py's shared settings)
VARIANTS = {
    "in_memory": ("map-style imagefolder, no cache", {}),
    "memory_cache": ("latents + text cached in memory", {**CACHED, "latent_cache": "memory"}),
    "disk_cache": ("latents + text cached on disk", {**CACHED, "latent_cache": "disk"}),
    "streaming": ("streamed parquet shards, no cache", STREAMED),
    "streaming_disk_cache": ("streamed shards, cache on disk", {**STREAMED, **CACHED, "latent_cache": "disk"}),
}
ROWS_PER_SHARD = 1024


def fail(message: str, code: int = 2) -> None:
    _fail(PROG, message, code)


def parse_list(flag: str, text: str, allowed=None) -> list:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if allowed is None:
        try:
            items = [int(part) for part in items]
        except ValueError:
            fail(f"--{flag}: {text!r} is not a comma-separated list of image counts, e.g. 4096,16384.")
        if not items or any(n < 1 for n in items):
            fail(f"--{flag}: {text!r} must list counts >= 1.")
    elif not items or any(item not in allowed for item in items):
        fail(f"--{flag}: {text!r} must be a comma-separated list of {', '.join(allowed)}.")
    if len(set(items)) != len(items):
        fail(f"--{flag}: {text!r} lists an entry twice.")
    return items


def parse_args(argv: list[str] | None = None):
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"), help="architectures and settings")
    parser.add_argument("--sizes", default="4096,16384,65536", help="dataset sizes in images, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="data paths to measure, comma-separated")
    parser.add_argument("--steps", type=int, default=20, help="measured optimizer steps, after the warm-up ones")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the steady state is timed")
    parser.add_argument("--batch", type=int, default=64, help="images per optimizer step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--multinode", action="store_true", help="also 2 machines × 1 process vs 1 × 2 (loopback)")
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "bench_scale"))
    parser.add_argument("--run_timeout", type=float, default=3600, help="seconds before a run is stopped")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for scripts/train.py")
    args = parser.parse_args(argv)

    args.sizes = parse_list("sizes", args.sizes)
    args.variants = parse_list("variants", args.variants, allowed=tuple(VARIANTS))
    for flag in ("steps", "warmup", "batch", "threads"):
        if getattr(args, flag) < 1:
            fail(f"--{flag}: {getattr(args, flag)} must be >= 1.")
    if args.multinode and args.batch % 2:
        fail(f"--batch: {args.batch} must be even with --multinode (it is split over 2 processes).")
    if args.run_timeout <= 0:
        fail(f"--run_timeout: {args.run_timeout} must be > 0.")
    if min(args.sizes) < args.batch:
        fail(f"--sizes: {min(args.sizes)} images are fewer than one --batch of {args.batch}.")
    output_dir = check_benchmark_arguments(PROG, args.overrides, args.output_dir, MARKER)
    args.output_dir = output_dir.resolve()

    from training.bench.parts import from_scratch
    from training.cli import USER_ERRORS
    from training.config import load_config

    # Every variant's config must load (a key sculpt refuses with one of them is this line, not a failed run).
    try:
        config = load_config(args.config, args.overrides)
        from_scratch(config)
        for variant in args.variants:
            load_config(args.config, [*args.overrides, *run_overrides(args, variant, Path("/model"), Path("/data"),
                                                                      Path("/shards"), Path("/out"), 1)])
    except USER_ERRORS as error:
        fail(f"--config: {error}")
    return args, config


def run_overrides(args, variant: str, model_dir: Path, data_dir: Path, shards_dir: Path, output_dir: Path,
                  processes: int) -> list[str]:  # fmt: skip
    from training.bench.runs import sculpt_overrides

    forced = sculpt_overrides(model_dir, data_dir, output_dir, args.output_dir / "cache", processes, args.batch,
                              args.warmup + args.steps, "no", cached=False)  # fmt: skip
    extra = dict(VARIANTS[variant][1])
    if extra.get("streaming") == "true":
        extra["dataset_name"] = str(shards_dir)
    return [*forced, *(f"{key}={value}" for key, value in extra.items()), "report_to=none"]


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "scripts/bench_scale.py", *argv])


def two_machines(args, train: list[str], run_dir: Path) -> dict:
    """2 launches × 1 process joined over loopback; measured from their stamps as one run."""
    from training.bench import runs

    stamps = run_dir / "stamps"
    stamps.mkdir(parents=True)
    env = runs.launch_env(stamps, args.threads, args.output_dir / "cache", sculpt=True)
    port = 29600 + os.getpid() % 300
    launches, logs = [], []
    launched = time.time()
    for rank in (0, 1):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                   "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no", *train]
        logs.append(open(run_dir / f"log-machine{rank}.txt", "w"))
        launches.append(subprocess.Popen(command, env=env, stdout=logs[-1], stderr=subprocess.STDOUT, cwd=ROOT))
    try:
        codes = [p.wait(timeout=args.run_timeout) for p in launches]
    except subprocess.TimeoutExpired:
        for p in launches:
            p.kill()
        fail(f"2 machines × 1 process ran past {args.run_timeout:.0f} s; see {run_dir}", code=1)
    exited = time.time()
    for log in logs:
        log.close()
    if any(codes):
        fail(f"2 machines × 1 process exited with {codes}; see the logs in {run_dir}", code=1)
    measured = runs.summarize(runs.read_stamps(stamps), args.warmup, args.batch, launched, exited)
    if measured["world_size"] != 2:
        fail(f"2 machines × 1 process trained with world size {measured['world_size']} (see {run_dir})", code=1)
    return measured


def same_unet(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    name = "unet/diffusion_pytorch_model.safetensors"
    x, y = load_file(a / name), load_file(b / name)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args, config = parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from training.bench import parts, runs
    from training.shards import imagefolder_rows, write_shards

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by scripts/bench_scale.py; its contents are replaced on a rerun\n")
    for stale in ("runs", "cache"):
        shutil.rmtree(out / stale, ignore_errors=True)

    rows, multinode = [], None
    plan = [(size, variant) for size in args.sizes for variant in args.variants]
    for index, (size, variant) in enumerate(tqdm(plan, desc="runs")):
        parts_dir = out / "parts" / str(size)
        model_dir, data_dir, shards_dir = parts_dir / "model", parts_dir / "data", parts_dir / "shards"
        if not (parts_dir / "done").exists():
            shutil.rmtree(parts_dir, ignore_errors=True)
            tqdm.write(f"building the parts and {size} shapes images (imagefolder + parquet shards) in {parts_dir}")
            parts.build_parts(config, parts_dir, size)
            write_shards(*imagefolder_rows(data_dir), shards_dir, rows_per_shard=ROWS_PER_SHARD)
            (parts_dir / "done").write_text("")
        run_dir = out / "runs" / f"{size}-{variant}"
        run_dir.mkdir(parents=True)
        train = [str(ROOT / "scripts" / "train.py"), "--config", str(Path(args.config).resolve()), *args.overrides,
                 *run_overrides(args, variant, model_dir, data_dir, shards_dir, run_dir / "output", 1)]
        env = runs.launch_env(run_dir / "stamps", args.threads, out / "cache", sculpt=True)
        try:
            result = runs.run("sculpt", [*runs.launch_command(sys.executable, 1, "no"), *train], env, run_dir, 1,
                              1, args.warmup, args.batch, args.run_timeout)  # fmt: skip
        except RuntimeError as error:
            fail(f"{size} images, {variant}: {error}", code=1)
        rows.append({"size": size, "variant": variant, **result.to_dict()})
        tqdm.write(f"{size:6d} images, {VARIANTS[variant][0]:34s}: peak RSS {result.peak_rss_mib:6.0f} MiB, "
                   f"{result.images_per_s:6.1f} images/s, start-up {result.startup_s:5.1f} s")  # fmt: skip
        shutil.rmtree(run_dir / "output", ignore_errors=True)

        if args.multinode and index == len(args.variants) - 1 and size == args.sizes[0]:
            tqdm.write("2 machines × 1 process vs 1 machine × 2 processes ...")
            multinode = {}
            for label in ("one_machine", "two_machines"):
                machine_dir = out / "runs" / f"{size}-{label}"
                machine_dir.mkdir(parents=True)
                train = [str(ROOT / "scripts" / "train.py"), "--config", str(Path(args.config).resolve()),
                         *args.overrides, *run_overrides(args, "in_memory", model_dir, data_dir, shards_dir,
                                                         machine_dir / "output", 2)]  # fmt: skip
                if label == "one_machine":
                    env = runs.launch_env(machine_dir / "stamps", args.threads, out / "cache", sculpt=True)
                    result = runs.run("sculpt", [*runs.launch_command(sys.executable, 2, "no"), *train], env,
                                      machine_dir, 2, 1, args.warmup, args.batch, args.run_timeout).to_dict()
                else:
                    result = two_machines(args, train, machine_dir)
                multinode[label] = result
            multinode["identical_unet"] = same_unet(out / "runs" / f"{size}-one_machine" / "output",
                                                    out / "runs" / f"{size}-two_machines" / "output")
            multinode["size"] = size

    text = markdown(args, argv, rows, multinode, torch.__version__)
    (out / "bench.md").write_text(text)
    (out / "bench.json").write_text(json.dumps({"command": command_line(argv), "rows": rows,
                                                "multinode": multinode}, indent=1, default=str))
    print(text)
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")


def markdown(args, argv, rows: list[dict], multinode: dict | None, torch_version: str) -> str:
    baseline = {r["size"]: r for r in rows if r["variant"] == "in_memory"}
    lines = [
        "## Data paths as the dataset grows", "", "```bash", command_line(argv), "```", "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs; torch {torch_version}. "
        f"Config {Path(args.config).name} ({' '.join(args.overrides) or 'as is'}), 1 process, {args.threads} "
        f"thread(s), batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps; built-in shapes images, "
        f"shards of {ROWS_PER_SHARD} rows.", "",
        "| images | data path | peak RSS (MiB) | images/s (mean) | images/s (median step) | × map-style | "
        "start-up (s) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for r in rows:
        base = baseline.get(r["size"])
        ratio = f"{r['images_per_s_median_step'] / base['images_per_s_median_step']:.2f}" if base else "–"
        lines.append(f"| {r['size']} | {VARIANTS[r['variant']][0]} | {r['peak_rss_mib']:.0f} | "
                     f"{r['images_per_s']:.1f} | {r['images_per_s_median_step']:.1f} | {ratio} | "
                     f"{r['startup_s']:.1f} |")  # fmt: skip
    lines += ["", "Peak RSS: the training process's peak resident memory (`ru_maxrss`, which counts the pages of "
              "memory-mapped Arrow files it touched). × map-style: median-step images/s over the map-style run's of "
              "the same size. Start-up includes building the latent cache where the row has one."]  # fmt: skip
    if multinode:
        one, two = multinode["one_machine"], multinode["two_machines"]
        lines += [
            "", f"### 2 machines × 1 process vs 1 machine × 2 processes ({multinode['size']} images, loopback, gloo)",
            "", "| launch | images/s (median step) | wall (s) | start-up (s) |", "| --- | ---: | ---: | ---: |",
            f"| 1 machine × 2 processes | {one['images_per_s_median_step']:.1f} | {one['wall_s']:.1f} | "
            f"{one['startup_s']:.1f} |",
            f"| 2 machines × 1 process | {two['images_per_s_median_step']:.1f} | {two['wall_s']:.1f} | "
            f"{two['startup_s']:.1f} |",
            "", f"Wall-time ratio (2 machines / 1): {two['wall_s'] / one['wall_s']:.2f}; final UNets "
            f"{'identical' if multinode['identical_unet'] else 'DIFFERENT'}.",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
