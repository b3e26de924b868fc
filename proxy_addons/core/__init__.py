"""The pure core of jectguard: canonicalization, list parsing, the compiled index.

Nothing in this package imports mitmproxy or aiohttp, touches a socket, or
depends on the event loop; a test keeps it that way.
"""
