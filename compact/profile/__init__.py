"""Profiling: parameter and MAC counts (hooks and fvcore)."""

from compact.profile.counting import Counts, conv_linear_macs, count, param_count

__all__ = ["Counts", "conv_linear_macs", "count", "param_count"]
