"""Event-loop selection shared by the test servers (kept free of aiohttp imports for the proxy)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def run_loop(main: Callable[[], Coroutine[Any, Any, None]], *, use_uvloop: bool = True) -> None:
    """Run ``main()`` on uvloop when requested and installed (benchmark servers), else on asyncio's loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
            return
    asyncio.run(main())
