"""Judges: how well a model trained on a built-in dataset follows its prompts, read off the generated pixels:
`shapes` (shapes.py), `digits` (digits.py: class accuracy and in-painting), `emoji` (emoji.py: colour and retrieval).
What they share (generating prompts at several guidance scales on the same noise, eval.json, the accuracy plot) is
in report.py."""
