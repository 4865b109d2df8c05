"""Entropy coding of the quantised latents with constriction's range coder.

Models come only from the integer tables in `entropy.npz` (see `fixedpoint`), so encoder
and decoder build identical coders.  Layout of the substreams (K >= 1):

* substream 0: every hyper-latent channel (factorised prior, one table per channel),
  then latent channel group 0;
* substream k > 0: latent channel group k.

A group holds one or more *parts* coded one after another: the whole latent, or for a
model with a context model its parts in coding order (fixedpoint.context_parts), whose
tables the decoder can only compute once every group's earlier parts are decoded.  Within a part,
symbols are coded table by table (ascending scale index), each table's
symbols in C,H,W raster order: one vectorised call per table.  A symbol outside a
table's support is coded as the table's escape symbol, and after all tables its value is
coded with an Elias-gamma-like code over uniform models, so any integer round-trips.
Substreams are independent: they encode and decode in parallel threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Sequence

import constriction
import numpy as np

from .errors import CorruptError
from .fixedpoint import PMF_BITS

_Categorical = constriction.stream.model.Categorical
_Uniform = constriction.stream.model.Uniform
SYMBOL_LIMIT = 1 << 15  # latents are clamped to +-2**15 before coding (far beyond any trained range)
_MAG_BITS = 17  # magnitude bit-lengths 0..16
_EXEC = ThreadPoolExecutor(max_workers=8, thread_name_prefix="saic-entropy")


@dataclass(frozen=True)
class _Table:
    model: object  # constriction Categorical over [offset .. offset+size-1] + escape
    offset: int
    size: int  # number of regular symbols (escape = size)


class EntropyTables:
    """Range-coder models built once per loaded model from the integer frequency tables."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self._y = [
            _table(f, -int(r)) for f, r in zip(arrays["y_freqs"], arrays["y_radii"])
        ]
        self._z = [_table(f, int(lo)) for f, lo in zip(arrays["z_freqs"], arrays["z_low"])]

    @cached_property
    def num_scales(self) -> int:
        return len(self._y)


def _table(freqs: np.ndarray, offset: int) -> _Table:
    n = int(np.count_nonzero(freqs))  # regular symbols + 1 escape (all >= 1 by construction)
    p = freqs[:n].astype(np.float64) / float(1 << PMF_BITS)
    return _Table(_Categorical(p, perfect=False), offset, n - 1)


def split_groups(channels: int, k: int) -> list[slice]:
    """K contiguous channel groups, sizes differing by at most one."""
    bounds = np.linspace(0, channels, k + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _encode_table(enc, table: _Table, values: np.ndarray, escapes: list[np.ndarray]) -> None:
    idx = values - table.offset
    bad = (idx < 0) | (idx >= table.size)
    if bad.any():
        escapes.append(values[bad])
        idx = np.where(bad, table.size, idx)
    enc.encode(idx.astype(np.int32), table.model)


def _decode_table(dec, table: _Table, count: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(dec.decode(table.model, count), dtype=np.int64)
    return idx + table.offset, idx == table.size


def _encode_escapes(enc, values: np.ndarray) -> None:
    """Signed integers, each as sign, bit-length, then the bits below the leading one."""
    if values.size == 0:
        return
    v = values.astype(np.int64)
    mag = np.abs(v)
    nbits = np.array([int(x).bit_length() for x in mag], np.int32)  # 0..16
    enc.encode((v < 0).astype(np.int32), _Uniform(2))
    enc.encode(nbits, _Uniform(_MAG_BITS))
    for m, nb in zip(mag, nbits):
        if nb > 1:
            enc.encode(np.array([int(m) - (1 << (nb - 1))], np.int32), _Uniform(1 << (nb - 1)))


def _decode_escapes(dec, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, np.int64)
    neg = np.asarray(dec.decode(_Uniform(2), count), bool)
    nbits = np.asarray(dec.decode(_Uniform(_MAG_BITS), count))
    mag = np.zeros(count, np.int64)
    for i, nb in enumerate(nbits):
        nb = int(nb)
        if nb == 1:
            mag[i] = 1
        elif nb > 1:
            mag[i] = (1 << (nb - 1)) + int(dec.decode(_Uniform(1 << (nb - 1)), 1)[0])
    return np.where(neg, -mag, mag)


def _encode_y_group(enc, tables: EntropyTables, sym: np.ndarray, index: np.ndarray) -> None:
    escapes: list[np.ndarray] = []
    flat_s, flat_i = sym.ravel(), index.ravel()
    order = np.argsort(flat_i, kind="stable")
    counts = np.bincount(flat_i, minlength=tables.num_scales)
    start = 0
    for k, n in enumerate(counts):
        if n:
            _encode_table(enc, tables._y[k], flat_s[order[start : start + n]], escapes)
            start += n
    _encode_escapes(enc, np.concatenate(escapes) if escapes else np.zeros(0, np.int64))


def _decode_y_group(dec, tables: EntropyTables, index: np.ndarray) -> np.ndarray:
    """Mirror of `_encode_y_group`: decode in coding order (by scale index, then position),
    escapes included, and scatter back to positions once at the end."""
    flat_i = index.ravel()
    order = np.argsort(flat_i, kind="stable")
    counts = np.bincount(flat_i, minlength=tables.num_scales)
    parts = [_decode_table(dec, tables._y[k], int(n)) for k, n in enumerate(counts) if n]
    coded = np.concatenate([v for v, _ in parts])
    escaped = np.concatenate([e for _, e in parts])
    n_esc = int(escaped.sum())
    if n_esc:
        coded[escaped] = _decode_escapes(dec, n_esc)
    values = np.empty_like(coded)
    values[order] = coded
    return values.reshape(index.shape)


def _encode_z(enc, tables: EntropyTables, z: np.ndarray) -> None:
    escapes: list[np.ndarray] = []
    for c in range(z.shape[0]):
        _encode_table(enc, tables._z[c], z[c].ravel(), escapes)
    _encode_escapes(enc, np.concatenate(escapes) if escapes else np.zeros(0, np.int64))


def _decode_z(dec, tables: EntropyTables, shape: tuple[int, int, int]) -> np.ndarray:
    c, h, w = shape
    values = np.empty((c, h * w), np.int64)
    escaped = np.zeros((c, h * w), bool)
    for i in range(c):
        values[i], escaped[i] = _decode_table(dec, tables._z[i], h * w)
    n_esc = int(escaped.sum())
    if n_esc:
        values[escaped] = _decode_escapes(dec, n_esc)
    return values.reshape(shape)


def _to_bytes(enc) -> bytes:
    # the range coder emits 32-bit words; trailing zero bytes carry nothing and are restored on read
    return enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0")


def _decoder(data: bytes):
    padded = bytes(data) + b"\0" * (-len(data) % 4)
    return constriction.stream.queue.RangeDecoder(np.frombuffer(padded, "<u4").copy())


def encode_z(tables: EntropyTables, z: np.ndarray):
    """Start substream 0 with the hyper-latent; returns the open encoder."""
    enc = constriction.stream.queue.RangeEncoder()
    _encode_z(enc, tables, np.clip(z, -SYMBOL_LIMIT, SYMBOL_LIMIT))
    return enc


def encode_y(
    tables: EntropyTables, z_encoder, parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int
) -> list[bytes]:
    """Finish substream 0 and write substreams 1..k-1 (in parallel).  parts: (symbols, scale
    index) pairs, channels first, coded in this order within every channel group."""
    groups = split_groups(parts[0][0].shape[0], k)

    def one(g: int) -> bytes:
        enc = z_encoder if g == 0 else constriction.stream.queue.RangeEncoder()
        for sym, index in parts:
            _encode_y_group(enc, tables, np.clip(sym[groups[g]], -SYMBOL_LIMIT, SYMBOL_LIMIT), index[groups[g]])
        return _to_bytes(enc)

    return list(_EXEC.map(one, range(k))) if k > 1 else [one(0)]


def decode_z(tables: EntropyTables, substream0: bytes, shape: tuple[int, int, int]):
    """Decode the hyper-latent from substream 0; returns (z, open decoder)."""
    dec = _decoder(substream0)
    try:
        return _decode_z(dec, tables, shape), dec
    except Exception as exc:  # constriction raises on exhausted/invalid data
        raise CorruptError(f"hyper-latent does not decode: {exc}") from exc


def y_decoders(z_decoder, substreams: Sequence[bytes]) -> list:
    """One open decoder per channel group: substream 0's continues after the hyper-latent."""
    return [z_decoder] + [_decoder(s) for s in substreams[1:]]


def decode_y(tables: EntropyTables, decoders: list, index: np.ndarray) -> np.ndarray:
    """Decode the next part (its scale index, channels first) from every group, in parallel."""
    groups = split_groups(index.shape[0], len(decoders))

    def one(g: int) -> np.ndarray:
        try:
            return _decode_y_group(decoders[g], tables, index[groups[g]])
        except Exception as exc:
            raise CorruptError(f"latent group {g} does not decode: {exc}") from exc

    parts = list(_EXEC.map(one, range(len(decoders)))) if len(decoders) > 1 else [one(0)]
    return np.concatenate(parts, axis=0)
