"""Comparison recipes (YAML). This folder is installed as the package ``compact.baselines``, so that
``compact run demo`` finds ``demo.yaml`` in an installed compact; see ``compact recipes``."""
