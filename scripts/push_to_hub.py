"""Push a saved pipeline folder (a training output_dir, or any folder sculpt's save_pretrained wrote) to the Hub.

    python scripts/push_to_hub.py outputs/tiny user/sculpt-tiny [--private] [--commit_message "..."]

Creates the repo if needed, then uploads in one commit the portable pipeline (model_index.json, the pipeline's .py,
the component folders), the model card with its snippet pointed at the repo, and the run's record (config.yaml,
samples, loss curve); never checkpoints, logs or temporary files. The token comes from `hf auth login` or HF_TOKEN;
HF_ENDPOINT selects another Hub. The folder is only read. Errors print one line to stderr: exit code 2 for what the
arguments or the setup got wrong (not a pipeline folder, no token, a namespace you cannot write to), 1 for what the
Hub or the network did.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`


from training.cli import OneLineParser  # noqa: E402

PROG = "push_to_hub.py"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a pipeline folder written by save_pretrained or by training")
    parser.add_argument("repo_id", help="'user/name' or 'org/name' (or 'name', in your own namespace)")
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing one is kept)")
    parser.add_argument("--commit_message", default=None)
    args = parser.parse_args(argv)

    from training.hub import PushError, push_folder

    try:
        url = push_folder(args.folder, args.repo_id, private=args.private, commit_message=args.commit_message)
    except (ValueError, FileNotFoundError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except PushError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
