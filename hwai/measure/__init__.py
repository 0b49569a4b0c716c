"""Measurement on this host: latency with an explicit thread count (`timing`), per-layer times from the runtimes'
profilers (`layers`), statistical verdicts between two models (`verdict`), the environment a number was taken
in (`env`), and ONNX Runtime's profiler trace (`ort_trace`, standalone: it also runs on devices without hwai)."""
from hwai.measure.env import environment
from hwai.measure.layers import LayerTimes, ort_layer_times, quiet_stderr, torch_layer_times
from hwai.measure.timing import (
                                 RUNTIMES,
                                 LatencyStats,
                                 MeasureConfig,
                                 MemoryStats,
                                 latency,
                                 ort_session,
                                 peak_memory,
                                 physical_cores,
                                 time_callable,
)

__all__ = ["environment", "LayerTimes", "ort_layer_times", "quiet_stderr", "torch_layer_times", "RUNTIMES",
           "LatencyStats", "MeasureConfig", "MemoryStats", "latency", "ort_session", "peak_memory", "physical_cores",
           "time_callable"]
