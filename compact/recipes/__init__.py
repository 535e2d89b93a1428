"""Comparison recipes (YAML) and `compact run`."""

from compact.recipes.runner import RunSettings, model_files, pending_jobs, run_recipe
from compact.recipes.schema import Entry, Recipe, load_recipe, parse_recipe

__all__ = ["Entry", "Recipe", "RunSettings", "load_recipe", "model_files", "parse_recipe", "pending_jobs", "run_recipe"]
