"""The built-in datasets, generated or built from registry packages so that nothing is downloaded from the Hub:
`shapes` (shapes.py, drawn here), `emoji` (emoji.py, OpenMoji's artwork with Unicode's names; `sculpt[emoji]`) and
`digits` (digits.py, scikit-learn's handwritten digits; `sculpt[digits]`). `TrainConfig.dataset_name` names them
(`BUILTIN_DATASETS`); emoji and digits are built once into `cache_dir` as imagefolders (cache.py)."""

from __future__ import annotations

from pathlib import Path


def builtin_cache_dir(config) -> Path:
    """Where the built-in datasets are built: `<cache_dir>/sculpt-builtin`, by default in datasets' own cache."""
    import datasets

    return Path(config.cache_dir or datasets.config.HF_DATASETS_CACHE) / "sculpt-builtin"


def builtin_dataset_dir(config, split: str = "train") -> Path:
    """The imagefolder of the config's built-in emoji or digits dataset (its `split`: digits hold one out for the
    judge), built on first use."""
    if config.dataset_name == "emoji":
        from .emoji import emoji_dataset_dir

        return emoji_dataset_dir(
            builtin_cache_dir(config), resolution=config.resolution, styles=config.emoji_styles,
            skin_tones=config.emoji_skin_tones, groups=config.emoji_groups or None,
            exclude_groups=config.emoji_exclude_groups, background=config.emoji_background,
        )  # fmt: skip
    if config.dataset_name == "digits":
        from .digits import digits_dataset_dir

        return digits_dataset_dir(builtin_cache_dir(config), resolution=config.resolution, split=split,
                                  test_per_class=config.digits_test_per_class, seed=config.dataset_seed)  # fmt: skip
    raise ValueError(f"`dataset_name`: {config.dataset_name!r} is not built into a folder (emoji, digits).")


def dataset_license(config) -> str | None:
    """The licence and attribution a model trained on a built-in dataset must carry (Markdown), or None."""
    if config.dataset_name == "emoji":
        from .emoji import emoji_license

        return emoji_license(config.emoji_styles)
    if config.dataset_name == "digits":
        from .digits import DIGITS_LICENSE

        return DIGITS_LICENSE
    return None
