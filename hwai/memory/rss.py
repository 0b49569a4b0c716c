"""Resident memory, exactly: the kernel's high-water mark (VmHWM) reset through /proc/self/clear_refs, so a peak
needs no sampling thread; and glibc told to return freed blocks, so resident memory follows live tensors."""
from __future__ import annotations

from pathlib import Path


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_rss(fn) -> int | None:
    """Peak resident memory above the start while `fn` runs: the kernel's high-water mark (VmHWM), reset through
    /proc/self/clear_refs first (exact, no sampling); None where /proc does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        start = _status_bytes("VmRSS")
    except (OSError, KeyError):
        fn()
        return None
    fn()
    return _status_bytes("VmHWM") - start


def release_freed_memory(threshold_bytes: int = 128 * 1024) -> bool:
    """Make glibc hand blocks above `threshold_bytes` back to the system when freed (mallopt M_MMAP_THRESHOLD; it
    also stops glibc raising the threshold as it does by default), so resident memory follows live tensors.
    Process-wide and permanent; for benchmarks. False where glibc is not available."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold_bytes))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
