"""Run one atheris harness:  python tests/fuzz/run.py {bitstream,image,decode,http} [libFuzzer flags] [corpus dir]

Instruments only saic and Pillow (coverage where our parsing and Pillow's plugins live);
without a corpus dir, fuzzes from a fresh temporary one seeded with the harness's seeds.
Needs `pip install atheris` (the `fuzz` extra).  Crashes are written to ./crash-<sha1>.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

import atheris

HARNESSES = ("bitstream", "image", "decode", "http")  # tests/fuzz/fuzz_<name>.py


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in HARNESSES:
        sys.exit(__doc__)
    include = ["saic", "PIL"] + (["starlette", "fastapi", "python_multipart"] if argv[1] == "http" else [])
    with atheris.instrument_imports(include=include):
        harness = importlib.import_module(f"fuzz_{argv[1]}")
        from PIL import Image

        Image.init()  # import every format plugin now, so that it is instrumented too
        if hasattr(harness, "prepare"):
            harness.prepare()  # loads the model / builds the app: imports the server modules now
    args = [argv[0], *argv[2:]]
    if all(a.startswith("-") for a in args[1:]):
        corpus = Path(tempfile.mkdtemp(prefix=f"saic-fuzz-{argv[1]}-"))
        for i, seed in enumerate(harness.seeds()):
            (corpus / f"seed{i}").write_bytes(seed)
        args.append(str(corpus))
        print(f"corpus: {corpus}", file=sys.stderr)
    atheris.Setup(args, harness.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
