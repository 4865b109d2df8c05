"""Typed errors.  Every error a client can cause derives from `InvalidInputError`;
the server maps these classes to HTTP/gRPC status codes in one table."""

from __future__ import annotations


class SaicError(Exception):
    """Base of all saic errors."""


class InvalidInputError(SaicError):
    """The caller sent something we cannot process (client error, never retried as-is)."""


class BitstreamError(InvalidInputError):
    """A bitstream that cannot be decoded."""


class BadMagicError(BitstreamError):
    """Not a saic bitstream (magic byte mismatch)."""


class UnsupportedVersionError(BitstreamError):
    """A saic bitstream of a format version this build cannot read."""


class TruncatedError(BitstreamError):
    """The bitstream ends before a field or section it announces."""


class CorruptError(BitstreamError):
    """CRC mismatch or an internally inconsistent bitstream."""


class ModelMismatchError(InvalidInputError):
    """The bitstream was written by a model that is not loaded (tag/hash mismatch)."""


class UnknownModelError(InvalidInputError):
    """A model id that is not loaded."""


class ImageTooLargeError(InvalidInputError):
    """Image dimensions above the configured pixel/side limit (checked before allocation)."""


class InvalidImageError(InvalidInputError):
    """Bytes that are not a decodable image, or an image of an unsupported kind."""


class InvalidParameterError(InvalidInputError):
    """A parameter out of range (quality, target_bpp, ...)."""


class ModelLoadError(SaicError):
    """A model directory that is missing, incomplete or fails its hash check (operator error)."""
