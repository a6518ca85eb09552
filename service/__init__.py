"""The serving side: FastAPI app over ONNX Runtime. Never imports torch, models or export."""

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
