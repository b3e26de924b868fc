"""jectguard: a malicious-URL blocklist proxy built on mitmproxy."""

__version__ = "0.1.0"
