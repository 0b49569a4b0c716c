"""Activation memory: tensor lifetimes and operator order (`lifetimes`), arena plans with in-place execution
(`planner`), patch-based inference of the first stage (`patch`, run by `executor`), activation checkpointing
under a training-memory budget (`checkpoint`).

The cost model uses `lifetimes`, `best_order`, `timeline` and `Lifetimes`; `plan` and `best_plan` give the
peak an MCU runtime plans for (see the README's memory section).
"""
from hwai.memory.lifetimes import ALIAS_OPS, Lifetimes, best_order, lifetimes, peak_bytes, timeline
from hwai.memory.patch import best_plan, capture, patched_graph, predict_latency, split_points
from hwai.memory.planner import Buffer, Plan, Step, plan

__all__ = ["ALIAS_OPS", "Buffer", "Lifetimes", "Plan", "Step", "best_order", "best_plan", "capture", "lifetimes",
           "patched_graph", "peak_bytes", "plan", "predict_latency", "split_points", "timeline"]
