"""Sharding a model across devices: split planning over a chain of devices and links (`plan`), pipeline
execution with torch.distributed.pipelining (`pipeline`), FSDP2 training past one device's memory (`fsdp`),
and a launcher that starts and watches the ranks (`launch`). Modules load torch on first use.
"""
