"""The LoRA measurement of docs/lora.md: teach the quickstart shapes model a concept it never saw (the config's: a yellow
background, configs/lora-shapes.yaml; or orange shapes, configs/lora-shapes-orange.yaml) with LoRA and with full
fine-tuning on the same data and budget, then judge both, and the base, with the shapes judge.

    python scripts/bench_lora.py --base outputs/quickstart/model --out outputs/bench-lora
    python scripts/bench_lora.py --base outputs/quickstart/model --out outputs/bench-lora-orange \
        --config configs/lora-shapes-orange.yaml
    python scripts/bench_lora.py --base outputs/quickstart/model --out outputs/bench-lora-replay \
        --config configs/lora-shapes-replay.yaml   # after scripts/make_shapes_dataset.py, as the config says

Steps (each skipped when its output exists, so a rerun after an interruption continues):
    1. train   LoRA, then full fine-tuning: --config as 2 gloo processes (OMP_NUM_THREADS=1 each),
               the full run with `training_mode=full` and its own learning rate; wall time and peak memory of each
               (the largest resident set of any of its processes), images/s from the trainer's own log
    2. judge   the base, the LoRA at scales 0, 0.5, 1, 1.5, and the full fine-tune, on the new concept's captions
               (those with the config's new colours, `shapes_colors`, or on its new backgrounds,
               `shapes_backgrounds`) and on the 108 original ones, read among the base values and the new ones (a red
               shape painted orange, or a gray background painted yellow, is wrong); scripts/evaluate.py, two at a
               time
    3. report  results.json, results.md (the table docs/lora.md and the README quote) and lora_scale.png

Timings depend on what else the machine runs: the table says how busy it was (the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from training.cli import OneLineParser  # noqa: E402

PROG = "bench_lora.py"
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "lora-shapes.yaml"
SCALES = (0.0, 0.5, 1.0, 1.5)
# Runs the command given after it, then prints the peak resident set (kB) and the CPU seconds of its process tree:
# RUSAGE_CHILDREN of a process that waited for its children covers all their descendants (Linux): ru_maxrss is the
# largest of them (the largest training process), ru_utime + ru_stime their sum. On a busy machine the CPU seconds say
# what the run costs: divided by 2 they are about its wall time on 2 cores of its own.
PEAK = "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); " \
       "u = resource.getrusage(resource.RUSAGE_CHILDREN); " \
       "print('PEAK_RSS_KB', u.ru_maxrss, 'CPU_SECONDS', u.ru_utime + u.ru_stime); sys.exit(rc)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the quickstart model folder (scripts/quickstart.sh)")
    parser.add_argument("--config", default=str(CONFIG), help="the LoRA config whose shapes_colors / "
                        "shapes_backgrounds name the concept (default: configs/lora-shapes.yaml)")  # fmt: skip
    parser.add_argument("--out", default="outputs/bench-lora", help="where runs, judgements and the table go")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of both runs (default: the config's)")
    parser.add_argument("--lora_lr", type=float, default=None, help="default: the config's learning_rate")
    parser.add_argument("--full_lr", type=float, default=1e-4, help="full fine-tuning's learning rate")
    parser.add_argument("--per_caption", type=int, default=2, help="judged images per caption")
    parser.add_argument("--guidance", default="1,2,3,5", help="guidance scales of the judge")
    parser.add_argument("--original_per_caption", type=int, default=None, help="the same for the 108 original captions "
                        "(default: --per_caption); each model's forgetting is read on the same seeds")  # fmt: skip
    parser.add_argument("--original_guidance", default=None, help="the same for the original captions (default: "
                        "--guidance); e.g. 3, the base model's best, on a busy machine")  # fmt: skip
    parser.add_argument("--port", type=int, default=29561)
    parser.add_argument("overrides", nargs="*", help="more key=value settings for both runs")
    args = parser.parse_args(argv)
    for flag in ("per_caption", "original_per_caption"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag}: {getattr(args, flag)} must be >= 1.")
    if not (Path(args.base) / "model_index.json").is_file():
        parser.error(f"--base: {args.base} has no model_index.json; train the quickstart model first.")
    args.config = Path(args.config).resolve()
    if not args.config.is_file():
        parser.error(f"--config: no such file: {args.config}")
    args.concept = concept(args.config)
    if not (args.concept["colors"] or args.concept["backgrounds"]):
        parser.error(f"--config: {args.config} names no new colour (shapes_colors) or background (shapes_backgrounds) "
                     "outside the base grammar, so there is no new concept to measure.")
    from training.config import load_config
    from training.dreambooth import check_class_images

    try:  # a replay config's class images must be there before minutes of training start
        check_class_images(load_config(str(args.config), args.overrides))
    except (ValueError, FileNotFoundError) as error:
        parser.error(f"--config: {error}")
    return args


def concept(config_path: Path) -> dict:
    """The new values a LoRA config teaches: {"colors", "backgrounds"} outside the base grammar, and a label."""
    from training.builtin.shapes import NEW_BACKGROUNDS, NEW_COLORS
    from training.config import load_config

    config = load_config(str(config_path))
    colors = [c for c in config.shapes_colors if c in NEW_COLORS]
    backgrounds = [b for b in config.shapes_backgrounds if b in NEW_BACKGROUNDS]
    label = " and ".join([*colors, *(f"{b} background" for b in backgrounds)])
    return {"colors": colors, "backgrounds": backgrounds, "label": label}


def run(cmd: list[str], log: Path) -> tuple[float, int | None, float | None]:
    """Run `cmd` with its output in `log`; (wall seconds, peak RSS in kB, CPU seconds). A failure stops the
    benchmark, naming the log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run([sys.executable, "-c", PEAK, *cmd], stdout=handle, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{PROG}: {' '.join(cmd[:4])} ... failed (exit {result.returncode}); see {log}")
    peak = [line.split() for line in log.read_text(errors="replace").splitlines() if line.startswith("PEAK_RSS_KB")]
    return seconds, (int(peak[-1][1]) if peak else None), (float(peak[-1][3]) if peak else None)


def images_per_second(output_dir: Path) -> float | None:
    """The median of the trainer's `images_per_sec` (all processes' images per optimizer step / its wall time),
    after the first 5 steps (warm-up), from its tensorboard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for folder in sorted({p.parent for p in (output_dir / "logs").rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(folder))
        events.Reload()
        if "images_per_sec" in events.Tags()["scalars"]:
            values += [e.value for e in events.Scalars("images_per_sec") if e.step > 5]
    return sorted(values)[len(values) // 2] if values else None


def train(args, mode: str, out: Path) -> dict:
    """One training run (skipped when its output exists): its settings, seconds, peak memory and images/s."""
    run_dir = out / f"train-{mode}"
    overrides = [f"output_dir={run_dir}", f"pretrained_model_name_or_path={args.base}", f"training_mode={mode}",
                 "report_to=tensorboard", "overwrite_output_dir=true", "validation_steps=null", *args.overrides]
    if args.steps:
        overrides.append(f"max_train_steps={args.steps}")
    lr = args.full_lr if mode == "full" else args.lora_lr
    if lr is not None:
        overrides.append(f"learning_rate={lr:g}")
    record = out / f"train-{mode}.json"
    if record.is_file() and (run_dir / "config.yaml").is_file():
        return json.loads(record.read_text())
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(args.port), str(ROOT / "scripts" / "train.py"), "--config", str(args.config), *overrides]  # fmt: skip
    load_before = os.getloadavg()[0]
    seconds, peak, cpu = run(launch, out / f"train-{mode}.log")
    from training.config import load_config
    from training.dreambooth import images_per_batch

    config = load_config(str(run_dir / "config.yaml"))
    trained = _trained_parameters(run_dir, mode, args.base)
    result = {"mode": mode, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1) if cpu else None,
              "peak_rss_mib": round(peak / 1024) if peak else None,
              "images_per_sec": images_per_second(run_dir), "steps": config.max_train_steps,
              "batch": images_per_batch(config) * 2, "learning_rate": config.learning_rate,
              "trained_parameters": trained, "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "command": " ".join(["accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config",
                                   _relative(args.config), *overrides])}  # fmt: skip
    if mode == "lora":
        unet_file = next((Path(args.base) / "unet").glob("*.safetensors"))
        lora_file = run_dir / "pytorch_lora_weights.safetensors"
        result.update(file_bytes=lora_file.stat().st_size, unet_bytes=unet_file.stat().st_size,
                      file_fraction=round(lora_file.stat().st_size / unet_file.stat().st_size, 4))
    record.write_text(json.dumps(result, indent=1))
    return result


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _trained_parameters(run_dir: Path, mode: str, base: str) -> int:
    from safetensors import safe_open

    if mode == "lora":
        path = run_dir / "pytorch_lora_weights.safetensors"
    else:
        path = next((run_dir / "unet").glob("*.safetensors"))
    with safe_open(str(path), "pt") as handle:
        return sum(_numel(handle.get_slice(k).get_shape()) for k in handle.keys())


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def judgements(args, out: Path) -> list[dict]:
    """(name, model, lora, scale, concept) of every judgement: on the concept's captions, then on the original ones."""
    jobs = []
    for new in (True, False):
        suffix = "concept" if new else "original"
        jobs.append({"name": f"base-{suffix}", "model": args.base, "concept": new})
        for scale in SCALES:
            jobs.append({"name": f"lora{scale:g}-{suffix}", "model": args.base, "lora": str(out / "train-lora"),
                         "scale": scale, "concept": new})  # fmt: skip
        jobs.append({"name": f"full-{suffix}", "model": str(out / "train-full"), "concept": new})
    return jobs


def judge(args, out: Path) -> dict[str, dict]:
    """Every judgement, two processes at a time (skipped when its eval.json exists)."""
    from training.builtin.shapes import BACKGROUNDS, COLORS

    running, results = [], {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for job in judgements(args, out):
        folder = out / "judge" / job["name"]
        while len(running) >= 2:
            running = _reap(running)
        if not (folder / "eval.json").is_file():
            new = args.concept
            cmd = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), job["model"], "--output_dir", str(folder),
                   "--per_caption", str(args.per_caption if job["concept"] else args.original_per_caption
                                        or args.per_caption),
                   "--guidance", args.guidance if job["concept"] else args.original_guidance or args.guidance,
                   "--palette", ",".join([*COLORS, *new["colors"]]),
                   "--background_palette", ",".join([*BACKGROUNDS, *new["backgrounds"]])]  # fmt: skip
            if job["concept"] and new["colors"]:
                cmd += ["--colors", ",".join(new["colors"])]
            if job["concept"] and new["backgrounds"]:
                cmd += ["--backgrounds", ",".join(new["backgrounds"])]
            if job.get("lora"):
                cmd += ["--lora", job["lora"], "--lora_scale", f"{job['scale']:g}"]
            job["command"] = " ".join(["python", *[str(Path(c).relative_to(ROOT)) if c.startswith(str(ROOT)) else c
                                                   for c in cmd[1:]]])  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / "evaluate.log", "w")
            running.append((job, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            (folder / "command.txt").write_text(job["command"] + "\n")
    while running:
        running = _reap(running)
    for job in judgements(args, out):
        metrics = json.loads((out / "judge" / job["name"] / "eval.json").read_text())
        results[job["name"]] = {**job, "best_guidance_scale": metrics["best_guidance_scale"],
                                "best": metrics["best_accuracy"], "accuracy": metrics["accuracy"],
                                "seconds": metrics["seconds"],
                                "command": (out / "judge" / job["name"] / "command.txt").read_text().strip()}
    return results


def _reap(running):
    time.sleep(2)
    still = []
    for job, process, log in running:
        if process.poll() is None:
            still.append((job, process, log))
            continue
        log.close()
        if process.returncode != 0:
            sys.exit(f"{PROG}: judging {job['name']} failed; see {log.name}")
    return still


def report(out: Path, trained: dict, judged: dict, concept: dict) -> str:
    """results.md: the table, with the commands that produced each number; and the lora_scale plot."""
    def best(name, key="all"):
        return judged[name]["best"][key]

    label, key_attribute = concept["label"], "color" if concept["colors"] else "background"
    lines = [f"| model | {label} captions: all four ({_ATTRIBUTE[key_attribute]}) | 108 original captions: all four | "
             "change vs base | trained parameters | file |", "| --- | --- | --- | --- | --- | --- |"]
    base_all = best("base-original")
    rows = [("base (quickstart)", "base", None), ("LoRA (scale 1)", "lora1", trained["lora"]),
            ("full fine-tuning", "full", trained["full"])]
    for name, key, train_record in rows:
        size = ""
        if key == "lora1":
            size = f"{train_record['file_bytes'] / 1024:.0f} kB ({train_record['file_fraction']:.1%} of the UNet)"
        elif key == "full":
            size = f"{next((out / 'train-full' / 'unet').glob('*.safetensors')).stat().st_size / 1024:.0f} kB"
        params = f"{train_record['trained_parameters']:,}" if train_record else "-"
        lines.append(f"| {name} | {best(f'{key}-concept'):.3f} ({best(f'{key}-concept', key_attribute):.3f}) | "
                     f"{best(f'{key}-original'):.3f} | {100 * (best(f'{key}-original') - base_all):+.1f} points | "
                     f"{params} | {size} |")
    lines += ["", f"| LoRA scale | {label}: all four | {label}: {_ATTRIBUTE[key_attribute]} | original: all four |",
              "| --- | --- | --- | --- |"]
    for scale in SCALES:
        lines.append(f"| {scale:g} | {best(f'lora{scale:g}-concept'):.3f} | "
                     f"{best(f'lora{scale:g}-concept', key_attribute):.3f} | {best(f'lora{scale:g}-original'):.3f} |")
    lines += ["", "| training (2 processes) | images/s | wall time | CPU time / 2 | peak memory per process | "
              "load average |", "| --- | --- | --- | --- | --- | --- |"]
    for mode in ("lora", "full"):
        t = trained[mode]
        ips = f"{t['images_per_sec']:.0f}" if t["images_per_sec"] else "?"
        cpu = f"{t['cpu_seconds'] / 2:.0f} s" if t.get("cpu_seconds") else "?"
        lines.append(f"| {mode} ({t['steps']} steps × {t['batch']}) | {ips} | {t['seconds']:.0f} s | {cpu} | "
                     f"{t['peak_rss_mib']} MiB | {t['load_average'][0]} → {t['load_average'][1]} |")
    lines += ["", "Commands:", ""] + [f"- {mode}: `{trained[mode]['command']}`" for mode in ("lora", "full")]
    lines += [f"- {name}: `{judged[name]['command']}`" for name in judged]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    _plot(out, judged, label, key_attribute)
    return text


_ATTRIBUTE = {"color": "colour", "background": "background"}


def _plot(out: Path, judged: dict, label: str, key_attribute: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
    for suffix, key, name, style in (("concept", "all", f"{label} captions: all four", "o-"),
                                     ("concept", key_attribute, f"{label} captions: {_ATTRIBUTE[key_attribute]}", "s--"),
                                     ("original", "all", "108 original captions: all four", "^-")):  # fmt: skip
        ax.plot(SCALES, [judged[f"lora{s:g}-{suffix}"]["best"][key] for s in SCALES], style, label=name)
    ax.axhline(judged["base-original"]["best"]["all"], color="gray", linestyle=":", label="base, original captions")
    ax.set_xlabel("lora_scale (cross_attention_kwargs['scale'])")
    ax.set_ylabel("accuracy at the best guidance scale")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(SCALES)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    ax.set_title(f"LoRA strength: the new {label} against what the base knew", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "lora_scale.png")
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trained = {mode: train(args, mode, out) for mode in ("lora", "full")}
    judged = judge(args, out)
    (out / "results.json").write_text(json.dumps({"train": trained, "judge": judged, "concept": args.concept,
                                                  "config": _relative(args.config)}, indent=1))
    print(report(out, trained, judged, args.concept))
    return 0


if __name__ == "__main__":
    sys.exit(main())
