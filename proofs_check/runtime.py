"""Runtime defaults shared by the CLI and the Python API: torch threads and device."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


class UserError(Exception):
    """Bad input from the user: the CLI prints it as one line and exits with status 2."""


def default_threads() -> int:
    """Torch intra-op threads for gapcheck's work: ``GAPCHECK_THREADS`` or 1.

    One thread by default: the work is many tiny batched linear-algebra calls, where a second
    thread only adds synchronization (10–25× slower on a loaded 2-core machine,
    docs/performance.md)."""
    raw = os.environ.get("GAPCHECK_THREADS", "1")
    try:
        n = int(raw)
    except ValueError:
        raise UserError(f"GAPCHECK_THREADS must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise UserError(f"GAPCHECK_THREADS must be a positive integer, got {raw!r}")
    return n


def current_umask() -> int:
    """The process's file-creation mask (read without changing it), so files written through a
    temporary file get the permissions an ordinary new file would."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Run a block with ``n`` (default :func:`default_threads`) torch threads, then restore
    the caller's setting: library calls behave like the CLI without changing global state."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(default_threads() if n is None else n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def gapcheck_version() -> str:
    """The installed gapcheck's version, or "unknown" in a source tree that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gapcheck")
    except PackageNotFoundError:
        return "unknown"
