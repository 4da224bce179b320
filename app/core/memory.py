"""Process-wide memory policy for processes that stream tensors (CLI, workers)."""

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
CHUNK_MAPPING_THRESHOLD = 1024 * 1024


def return_freed_buffers_to_os(threshold: int = CHUNK_MAPPING_THRESHOLD) -> bool:
    """Give every buffer of `threshold` bytes or more a mapping of its own, unmapped on free.

    glibc raises its mmap threshold each time a large block is freed; after that, chunk-sized
    buffers come from the heap and stay with the process when freed, so a streaming merge's
    peak RSS grows to several times its chunk budget. A fixed threshold stops that. Returns
    False where the C library is not glibc (nothing is changed there).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
