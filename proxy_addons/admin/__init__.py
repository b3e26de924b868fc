"""The admin API and dashboard: the aiohttp app (:mod:`.app`), its token, PAC and static files.

The mitmproxy addon that serves it is :mod:`proxy_addons.addons.admin`.
"""
