"""The saic codec: bitstream format, entropy coding, ONNX sessions and the compress/decompress API."""

from .api import compress, decompress, registry
from .model import CodecModel
from .registry import ModelRegistry, default_model_dir


def load_model(path, **kwargs) -> CodecModel:
    """Load one model directory (verifies its hashes)."""
    return CodecModel(path, **kwargs)


def default_model() -> CodecModel:
    """The default model of the process-wide registry."""
    return registry().get()


__all__ = ["CodecModel", "ModelRegistry", "compress", "decompress", "default_model", "default_model_dir", "load_model", "registry"]
