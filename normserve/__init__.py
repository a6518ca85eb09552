"""normserve: fold, freeze, prove and serve normalization-layer models through ONNX Runtime."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("normserve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
