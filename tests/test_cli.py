"""The `saic` command line: compress/decompress round trips through files, folders and pipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saic.codec import bitstream

ROOT = Path(__file__).resolve().parents[1]


def saic(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saic.cli", *args], input=stdin, capture_output=True, cwd=ROOT,
                          timeout=120)


@pytest.fixture()
def png(tmp_path: Path) -> Path:
    yy, xx = np.mgrid[0:72, 0:100]
    rgb = np.stack([xx * 2, yy * 3, (xx + yy) % 256], -1).astype(np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(rgb).save(path)
    return path


def test_file_round_trip_prints_bpp_and_psnr(png: Path, tmp_path: Path):
    out = tmp_path / "x.saic"
    r = saic("compress", str(png), str(out), "--quality", "70")
    assert r.returncode == 0, r.stderr.decode()
    assert b"bpp" in r.stderr and b"PSNR" in r.stderr
    assert bitstream.read_header(out.read_bytes()).quality == 70
    r = saic("decompress", str(out), str(tmp_path / "y.png"))
    assert r.returncode == 0, r.stderr.decode()
    assert Image.open(tmp_path / "y.png").size == (100, 72)


def test_pipes_and_target_bpp(png: Path):
    r = saic("compress", "-", "-", "--target-bpp", "1.0", "--no-psnr", stdin=png.read_bytes())
    assert r.returncode == 0, r.stderr.decode()
    assert 8 * len(r.stdout) / (100 * 72) <= 1.0 or bitstream.read_header(r.stdout).quality == 0
    d = saic("decompress", "-", "-", stdin=r.stdout)
    assert d.returncode == 0 and d.stdout.startswith(b"\x89PNG")


def test_half_resolution(png: Path, tmp_path: Path):
    out = tmp_path / "h.saic"
    r = saic("compress", str(png), str(out), "--quality", "30", "--half")
    assert r.returncode == 0, r.stderr.decode()
    assert b"at half resolution" in r.stderr and b"PSNR" in r.stderr
    assert bitstream.read_header(out.read_bytes()).downscale == 2
    r = saic("decompress", str(out), str(tmp_path / "h.png"))
    assert r.returncode == 0 and Image.open(tmp_path / "h.png").size == (100, 72)
    r = saic("compress", str(png), str(out), "--target-bpp", "0.1", "--half")
    assert r.returncode == 2 and b"--half goes with --quality" in r.stderr


def test_folders_and_errors(png: Path, tmp_path: Path):
    (tmp_path / "notes.png").write_bytes(b"not an image")
    r = saic("compress", str(tmp_path), str(tmp_path / "out"), "--no-psnr")
    assert r.returncode == 1  # one bad file: reported, the good one still written
    assert b"notes.png: error" in r.stderr
    assert (tmp_path / "out" / "in.saic").exists()
    r = saic("decompress", str(tmp_path / "out"), str(tmp_path / "dec"))
    assert r.returncode == 0 and (tmp_path / "dec" / "in.png").exists()
    r = saic("decompress", str(png))
    assert r.returncode == 1 and b"error" in r.stderr


def test_help_lists_commands():
    r = saic("--help")
    assert r.returncode == 0
    for cmd in (b"compress", b"decompress", b"eval", b"serve"):
        assert cmd in r.stdout
