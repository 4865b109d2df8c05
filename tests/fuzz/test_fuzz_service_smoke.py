"""Smoke runs (CI) of the service-level fuzz harnesses: the full decode path and HTTP request
parsing, over their seeds plus hypothesis-generated mutations.  The coverage-guided runs are
`python tests/fuzz/run.py {decode,http} -max_total_time=N` (docs/reliability.md)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_decode
import fuzz_http


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with a few bytes replaced, a cut, or an insertion; or plain random bytes."""

    @st.composite
    def strategy(draw: st.DrawFn) -> bytes:
        if draw(st.integers(0, 9)) == 0:
            return draw(st.binary(max_size=300))
        s = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.integers(0, 2))
            at = draw(st.integers(0, len(s)))
            if op == 0 and s:
                s[min(at, len(s) - 1)] = draw(st.integers(0, 255))
            elif op == 1:
                s = s[:at] + s[at + draw(st.integers(1, 64)) :]
            else:
                s[at:at] = draw(st.binary(min_size=1, max_size=32))
        return bytes(s)

    return strategy()


@pytest.mark.parametrize("seed", fuzz_decode.seeds(), ids=lambda s: f"{len(s)}B")
def test_decode_seeds(seed: bytes) -> None:
    fuzz_decode.check(seed)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated(fuzz_decode.seeds()))
def test_decode_path_only_typed_errors(data: bytes) -> None:
    fuzz_decode.check(data)


@pytest.mark.parametrize("seed", fuzz_http.seeds(), ids=lambda s: f"{fuzz_http.request_from_bytes(s)[1]}-{len(s)}B")
def test_http_seeds_are_served(seed: bytes) -> None:
    """The seeds are valid requests: 2xx (or the reserved 501), so mutations start from real paths."""
    method, path, query, headers, body = fuzz_http.request_from_bytes(seed)
    status, _, out = fuzz_http.harness().request(method, path, query, headers, body)
    assert status < 300 or (path == "/v1/classify" and status == 501), (path, status, out[:300])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated(fuzz_http.seeds()))
def test_http_parsing_never_5xx(data: bytes) -> None:
    fuzz_http.check(data)
