"""The names of the files in a run folder (see :mod:`compact.engine.trainer`)."""

CONFIG, CHECKPOINT, MODEL, SUMMARY = "config.yaml", "checkpoint.pt", "model.safetensors", "summary.json"
RUN_FILES = (CONFIG, "metrics.jsonl", "metrics.csv", CHECKPOINT, MODEL, SUMMARY)
