"""Profiling any model: parameters and MACs (hooks, fvcore), ONNX export with parity, latency (ONNX Runtime,
PyTorch), stored as JSON next to the model."""

from compact.profile.counting import Counts, conv_linear_macs, count, param_count
from compact.profile.latency import Timing, time_interleaved

__all__ = ["Counts", "Timing", "conv_linear_macs", "count", "param_count", "time_interleaved"]
