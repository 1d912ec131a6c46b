"""Write the built-in emoji dataset (OpenMoji, optionally Noto Color Emoji; CLDR names as captions) as an imagefolder,
loadable with `train_data_dir: OUT` or `datasets.load_dataset("imagefolder", data_dir=OUT)`. Needs
`pip install 'sculpt[emoji]'` (and `apt-get install fonts-noto-color-emoji` for the noto style).

    python scripts/make_emoji_dataset.py data/emoji --resolution 32 --exclude_groups Flags --styles openmoji,noto
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit code 2 (argparse's own prints the usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv=None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="new or empty folder to write into")
    parser.add_argument("--resolution", type=int, default=32, help="image side in pixels")
    parser.add_argument("--skin_tones", action="store_true", help="include the skin-tone variants (2,030 more emoji)")
    parser.add_argument("--groups", type=_names, default=None, help="only these groups, comma-separated")
    parser.add_argument("--exclude_groups", type=_names, default=[], help='e.g. "Flags,Smileys & Emotion"')
    parser.add_argument("--styles", type=_names, default=["openmoji"], help="openmoji and/or noto, comma-separated")
    parser.add_argument("--background", default="white", help="colour name or #rrggbb behind the emoji")
    parser.add_argument("--noto_font", default=None, help="the Noto Color Emoji font, if not where Debian puts it")
    args = parser.parse_args(argv)

    from training.builtin.emoji import build_emoji_dataset  # after parsing: bad flags fail fast

    try:
        output_dir = build_emoji_dataset(
            args.output_dir, resolution=args.resolution, styles=args.styles, skin_tones=args.skin_tones,
            groups=args.groups, exclude_groups=args.exclude_groups, background=args.background,
            noto_font=args.noto_font,
        )  # fmt: skip
    except (ValueError, FileExistsError, FileNotFoundError, ImportError) as error:
        parser.error(str(error).replace("`", "--", 1).replace("`", "", 1))  # `resolution` → --resolution
    num_images = len((output_dir / "metadata.jsonl").read_text(encoding="utf-8").splitlines())
    print(f"Wrote {num_images} images, metadata.jsonl, README.md and the licences to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
