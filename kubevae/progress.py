"""Progress for long work: a bar on an interactive terminal, plain periodic lines otherwise.

Both go to stderr, so that stdout stays clean for the metric lines Katib parses.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None,
             every_seconds: float = 10.0, enabled: bool = True) -> Iterator[T]:
    """`enabled=False` passes the items through silently: the other ranks of a distributed
    run, whose bars would repeat rank 0's."""
    if not enabled:
        yield from iterable
        return
    if sys.stderr.isatty():
        yield from tqdm(iterable, desc=desc, total=total, file=sys.stderr, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_seconds:
            last = now
            of = f"/{total}" if total else ""
            print(f"{desc}: {done}{of} ({done / (now - start):.1f}/s)", file=sys.stderr, flush=True)
    if done:
        print(f"{desc}: {done} done in {time.monotonic() - start:.1f}s", file=sys.stderr, flush=True)
