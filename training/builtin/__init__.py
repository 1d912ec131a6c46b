"""The built-in datasets, generated or built from registry packages so that nothing is downloaded from the Hub:
`shapes` (shapes.py, drawn here), `emoji` (emoji.py, OpenMoji's artwork with Unicode's names; `sculpt[emoji]`) and
`digits` (digits.py, scikit-learn's handwritten digits; `sculpt[digits]`). `TrainConfig.dataset_name` names them
(`BUILTIN_DATASETS`); emoji and digits are built once into `cache_dir` as imagefolders (cache.py)."""
