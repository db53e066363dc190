"""SIGTERM/SIGINT: the first asks for a graceful stop, the second exits at once (leases then expire)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable


def install(loop: asyncio.AbstractEventLoop, on_first: Callable[[str], None]) -> None:
    received: list[int] = []

    def handler(signum: int) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            on_first(f"{name} received: finishing in-flight work (send it again to stop at once)")
        else:
            print(f"crawl: second {name}: exiting now; leases held will expire", file=sys.stderr, flush=True)
            os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig)
