"""Request ids: the caller's ``x-request-id`` when it is safe to echo and log, else a new one.

New ids are this process's random prefix and a counter (``3f9c1a2b7d4e-1a``): unique across
processes and restarts without a system call per request. HTTP and gRPC take them from here.
"""

from __future__ import annotations

import itertools
import os
import re

__all__ = ["request_id"]

# Printable, no spaces or quotes: safe in a header, a log line and a span attribute.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PREFIX = os.urandom(6).hex()
_COUNTER = itertools.count(1)


def request_id(given: str | None) -> str:
    """``given`` when it is 1-128 characters of ``A-Za-z0-9._:-``, else a new id."""
    if given is not None and _ACCEPTED.fullmatch(given):
        return given
    return f"{_PREFIX}-{next(_COUNTER):x}"


def _new_prefix_after_fork() -> None:
    """A forked child (offload workers, test servers) must not repeat its parent's ids."""
    global _PREFIX, _COUNTER
    _PREFIX = os.urandom(6).hex()
    _COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_new_prefix_after_fork)
