"""BLAS threading for the hot paths, set in one place and applied by every entry point (the
`hil` command, the GUI, `hil.open_station`, the benchmark scripts).

The matrices here are small (128 x 16 tiles, mini-batches of a few hundred): on a loaded 2-core
machine multi-threaded OpenBLAS ran the 10,000 x 128x16 VMM benchmark 9-18x slower than one
thread. The default is therefore one thread; the environment variable HIL_BLAS_THREADS overrides
it with a positive integer, or "default" to leave the BLAS library's own setting alone.
"""
from __future__ import annotations

import os
from typing import Optional

from threadpoolctl import threadpool_limits

from hil.errors import ConfigError

ENV_VAR = "HIL_BLAS_THREADS"
DEFAULT_THREADS = 1


def threads_from_env() -> Optional[int]:
    """The BLAS thread count HIL_BLAS_THREADS asks for: unset or empty -> DEFAULT_THREADS,
    "default" -> None (leave the library alone), else a positive integer (ConfigError if not)."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_THREADS
    if raw.lower() == "default":
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f'{ENV_VAR} must be a positive integer or "default", got {raw!r}')
    return n


def configure_blas(threads: Optional[int] = None) -> Optional[int]:
    """Limit BLAS to `threads` threads for the rest of the process (None: as HIL_BLAS_THREADS
    says, default 1). Returns the limit set, or None when the library's setting is left alone."""
    n = threads_from_env() if threads is None else int(threads)
    if n is not None:
        if n < 1:
            raise ConfigError(f"BLAS threads must be >= 1, got {n}")
        threadpool_limits(limits=n, user_api="blas")
    return n


def blas_threads(n: Optional[int]):
    """Context limiting BLAS threads to `n` inside it only (None: unchanged)."""
    return threadpool_limits(limits=None if n is None else int(n), user_api="blas")

