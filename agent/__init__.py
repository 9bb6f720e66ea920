"""Stockade agent: the daemon on a protected machine (scanner, chunker, uploader, restorer).

``agent.protocol`` is a stdlib-only leaf shared with the server; nothing else here may be
imported by the server.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stockade")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
