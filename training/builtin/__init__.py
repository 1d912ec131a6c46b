"""The built-in datasets, generated or built from registry packages so that nothing is downloaded from the Hub:
`shapes` (training/builtin/shapes.py). `TrainConfig.dataset_name` names them (`BUILTIN_DATASETS`)."""
