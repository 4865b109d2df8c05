"""bench/codec.py pieces: quality matching, a real subprocess case with peak memory, the report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from saic.eval.rd import synthetic_image

BENCH = Path(__file__).resolve().parents[1] / "bench" / "codec.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("saic_bench_codec", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_match_quality_hits_target(bench) -> None:
    rgb = synthetic_image(96, 128, seed=5)
    q, bpp = bench.match_quality("webp", rgb, 1.0, threads=1)
    lower, _ = bench.match_quality("webp", rgb, 0.3, threads=1)
    assert 0 <= lower < q <= 100
    assert bpp == pytest.approx(1.0, rel=0.35)


def test_case_in_subprocess_and_report(bench, tmp_path: Path) -> None:
    common = {"threads": 1, "reps": 1, "model": "", "size": "kodak", "codec": "webp", "quality": 40}
    enc = bench.merge([bench.run_case({**common, "op": "encode", "out": str(tmp_path / "x.webp")}, 0)])
    dec = bench.merge([bench.run_case({**common, "op": "decode", "data": str(tmp_path / "x.webp")}, 0)])
    assert enc["megapixels"] == pytest.approx(0.393216)
    assert enc["bytes"] == (tmp_path / "x.webp").stat().st_size and 0 < enc["bpp"] < 8
    assert dec["seconds"] > 0 and dec["cpu_seconds"] > 0 and dec["peak_rss_mb"] > 10
    text = bench.report({
        "threads": 1, "reps": 1, "rounds": 1, "qualities": {"webp": 40}, "cpus": 2, "cpu_sgemm_gflops": 1.0,
        "load_average_start": (0.0, 0.0, 0.0), "load_average_end": (0.0, 0.0, 0.0),
        "sizes": {"kodak": {"image": "test", "flops": {}, "codecs": {"webp": {"encode": enc, "decode": dec}}}},
    })
    assert "| webp |" in text
