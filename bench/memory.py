"""Resident-memory helpers shared by the benchmark scripts (they run as ``python bench/NAME.py``; Linux).

Peak memory on the CPU is read from the process's peak resident set size (VmHWM of /proc/self/status): it
counts every allocation, including torch's and MKL's native ones, which tracemalloc (Python allocations
only) does not see.
"""

from __future__ import annotations

import ctypes


def status_kib(field: str) -> int:
    """A memory figure (KiB) from /proc/self/status, e.g. VmRSS or VmHWM."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def release_free_memory() -> None:
    """Give memory freed by earlier work back to the system (glibc ``malloc_trim``), so it is not counted.

    glibc keeps freed blocks below its (dynamic, up to 32 MiB) mmap threshold in its heap, where they
    stay resident; without this, the set-up's temporaries would inflate every later figure.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to trim
        pass


def reset_peak() -> None:
    """Reset the peak resident set size (VmHWM) to the current resident size (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
