"""Judges: how well a model trained on a built-in dataset follows its prompts, read off the generated pixels.
`shapes` (training/judges/shapes.py); the generation harness, eval.json, plots and grids they share are in
training/judges/report.py."""
