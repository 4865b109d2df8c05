"""Smoke run of the fuzz harnesses (CI): seeds plus a few hundred cheap mutations of them."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

import fuzz_bitstream
import fuzz_image


def mutations(seeds: list[bytes], n: int, rng: random.Random) -> list[bytes]:
    out = list(seeds)
    for _ in range(n):
        s = bytearray(rng.choice(seeds))
        op = rng.randrange(4)
        if op == 0 and s:
            for _ in range(rng.randint(1, 4)):
                s[rng.randrange(len(s))] = rng.randrange(256)
        elif op == 1:
            s = s[: rng.randrange(len(s) + 1)]
        elif op == 2:
            s[rng.randrange(len(s) + 1) : rng.randrange(len(s) + 1)] = rng.randbytes(rng.randint(1, 16))
        else:
            s = bytearray(rng.randbytes(rng.randint(0, 64)))
        out.append(bytes(s))
    return out


@pytest.mark.parametrize(
    "check, seeds, n",
    [(fuzz_bitstream.check, fuzz_bitstream.seeds(), 2000), (fuzz_image.check, fuzz_image.seeds(), 300)],
    ids=["bitstream", "image"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt EXIF it tolerates
def test_harness_smoke(check: Callable[[bytes], None], seeds: list[bytes], n: int) -> None:
    for data in mutations(seeds, n, random.Random(1234)):
        check(data)
