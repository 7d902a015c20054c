"""Give freed memory back to the OS: what keeps a long-running hop's RSS flat after a burst."""

from __future__ import annotations

import ctypes

_M_MMAP_THRESHOLD = -3  # glibc malloc.h
_MMAP_THRESHOLD_BYTES = 64 * 1024


def return_large_buffers_to_the_os() -> None:
    """Allocations of 64 KiB and up (socket reads, segment blobs, large messages) get their own
    mapping, unmapped on free.

    glibc otherwise raises its mmap threshold after the first such free (up to 32 MiB), serves
    later ones from the heap, and the heap fragments and is never trimmed. Measured: the forwarder
    grew from 33 to 52 MB spooling 300k messages, 36 MB with the threshold fixed; the ingester
    stayed at 206 MB after bursts of 10 MB messages, back to its start with it. Call it once, at
    process start. A no-op where there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        return
