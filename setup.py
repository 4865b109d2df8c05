"""Build hook: generate the gRPC Python code from protos/ at build/install time.

All metadata lives in pyproject.toml.  The generated package `saic.server._proto` is never
committed: `build_py` runs grpc_tools.protoc (a build requirement) into the build tree for
wheels (`pip install .`) and into the source tree for editable installs (`pip install -e .`).
`saic.server.proto` regenerates on import if the code is missing or older than the .proto.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = ROOT / "protos"
SOURCE_OUT = ROOT / "service" / "saic" / "server" / "_proto"


def _protogen():  # noqa: ANN202 - a module loaded by path (saic itself may not be importable yet)
    spec = importlib.util.spec_from_file_location("_saic_protogen", ROOT / "service" / "saic" / "server" / "protogen.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithProtos(build_py):
    """build_py that also generates saic.server._proto from protos/saic/v1/*.proto."""

    def run(self) -> None:
        super().run()
        gen = _protogen()
        if getattr(self, "editable_mode", False):
            files = gen.generate(PROTOS, SOURCE_OUT)
        else:
            files = gen.generate(PROTOS, Path(self.build_lib) / "saic" / "server" / "_proto")
        self.announce(f"generated {len(files)} gRPC files from {PROTOS}", level=2)


setup(cmdclass={"build_py": BuildPyWithProtos})
