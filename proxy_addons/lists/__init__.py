"""Where an engine comes from: the sources file, list files, the snapshot store and its health.

Everything here reads or writes disk; the parsing and compiling it calls are pure
(:mod:`proxy_addons.core`).
"""
