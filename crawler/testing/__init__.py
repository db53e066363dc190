"""Local services shared by the test suite, the benchmarks and the demo (installed with the library).

``services`` holds the process side: free ports, polling with a deadline, stopping by PID, a real
``redis-server`` (:class:`~crawler.testing.services.RedisServer`) and :func:`~crawler.testing.services.start_server`,
which runs one of the HTTP servers below as a subprocess and waits for its ``READY <url>`` line:

- ``site_server``: a deterministic generated website whose crawl result is computable in advance;
- ``proxy_server`` (with ``proxy_http``, ``proxy_upstream``): a forward proxy with Basic auth and CONNECT;
- ``hostile_server``: misbehaving endpoints (resets, bombs, hangs, floods, charset lies);
- ``serving`` and ``loop``: the socket, pre-fork and event-loop plumbing the servers share.

Nothing here is imported by the crawler itself.
"""
