"""A raw HTTP/1.1 upstream client: ``asyncio.Protocol`` connections, aiohttp's C response parser, a LIFO
keep-alive pool (issue #21). ``gateway/upstream.py`` sends through it when ``pool.client: raw``.

Modules: ``origin`` (where to connect, from ``base_url``), ``head`` (the request head),
``connection`` (one connection: parse, back-pressure, loss), ``pool`` (keep-alive, limit, expiry),
``client`` (one request: the stale-connection retry, the response handle), ``errors``.

Imported from those modules: the config's check of ``base_url`` (``origin``) must not load aiohttp's
client in the supervisor, which only validates the config and starts workers.
"""
