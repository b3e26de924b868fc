"""Keeping the lists current: fetch feeds, validate them, compile and publish a snapshot.

The mitmproxy addon that runs this in the proxy is :mod:`proxy_addons.addons.refresh`;
``jectguard update`` runs it once (:mod:`proxy_addons.cli.update`).
"""
