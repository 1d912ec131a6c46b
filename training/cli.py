"""The command lines of scripts/: `OneLineParser` and `fail` for every script (bad arguments are one line on stderr
and exit code 2), and `run`, the command line shared by scripts/train.py and scripts/train_vae.py:

    python scripts/train.py --config configs/tiny.yaml [key=value | --key=value ...] [--dry_run] [--debug]

Bad input (unknown key, wrong type, missing file, ...) prints one line and exits with code 2; a run that stops itself
for a reason it can explain (non-finite loss, a full disk, see `TrainingError`) prints one line and exits with code 1.
`--debug` shows the traceback instead. Imports no torch, so scripts check their arguments before loading it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import USER_ERRORS, TrainingError

# Vocabularies that scripts check before importing torch; training.config checks its keys against the same tuples.
MIXED_PRECISIONS = ("no", "fp16", "bf16")
ATTENTION_PROCESSORS = ("sdpa", "classic")  # diffusers' default AttnProcessor2_0, or AttnProcessor (bf16 on CPU)
# torch.compile backends for the UNet's training forward ("no": eager). "inductor" is the one that makes code faster;
# "aot_eager" and "eager" trace without generating code (to find a graph break or a wrong result quickly).
DYNAMO_BACKENDS = ("no", "inductor", "aot_eager", "eager")


def fail(prog: str, message: str, code: int = 2) -> None:
    """A bad argument: one line on stderr, "<prog>: error: <message>", and exit code 2 (1: a run that failed)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def check_benchmark_arguments(prog: str, overrides: list[str], output_dir: str, marker: str) -> Path:
    """The checks the benchmark scripts share, each a `fail` line: every override is key=value, and `output_dir` is
    new, empty, or one this benchmark made (it holds `marker`), so its contents may be replaced. Returns its path."""
    for item in overrides:
        if "=" not in item:
            fail(prog, f"unexpected argument {item!r}; config settings are given as key=value")
    path = Path(output_dir).expanduser()
    ours = path.is_dir() and (not any(path.iterdir()) or (path / marker).exists())
    if path.exists() and not ours:
        fail(prog, f"--output_dir: {output_dir} exists and was not made by this benchmark; give a new or empty folder.")
    return path


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2 (argparse's own prints the usage block too).
    Give `prog` (the script's file name): under a test runner sys.argv[0] is not the script."""

    def error(self, message: str) -> None:
        fail(self.prog, message)


def parse(argv: list[str] | None, description: str):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file with the run's settings (see configs/)")
    parser.add_argument("--dry_run", action="store_true", help="print the resolved config, build models and data, exit")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    args, rest = parser.parse_known_args(argv)
    return args, overrides_of(parser, rest)


def overrides_of(parser: argparse.ArgumentParser, rest: list[str]) -> list[str]:
    """The `key=value` (or `--key=value`) settings left after `parse_known_args`; anything else is a usage error."""
    overrides = []
    for item in rest:
        if "=" not in item:
            parser.error(f"unexpected argument {item!r}; settings are given as key=value (or --key=value)")
        overrides.append(item.removeprefix("--"))
    return overrides


def run(main, description: str, argv: list[str] | None = None) -> int:
    """Load the config from the command line, then call `main(config, dry_run=...)`."""
    from .config import config_to_dict, load_config

    args, overrides = parse(argv, description)
    try:
        config = load_config(args.config, overrides)
        if args.dry_run:
            import yaml

            print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        main(config, dry_run=args.dry_run)
    except (*USER_ERRORS, TrainingError) as error:
        if args.debug:
            raise
        _close_progress_bars()
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, TrainingError) else 2
    return 0


def _close_progress_bars() -> None:
    """A bar that the error interrupted would otherwise share its line with the message."""
    from tqdm import tqdm

    for bar in list(tqdm._instances):
        bar.close()
