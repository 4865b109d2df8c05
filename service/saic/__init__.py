"""saic: semantic-assisted learned image compression.  `saic.compress` / `saic.decompress`."""

from .codec import compress, decompress

__all__ = ["compress", "decompress"]
__version__ = "0.1.0"
