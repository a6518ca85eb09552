"""The serving side: FastAPI app over ONNX Runtime. Never imports torch, models or export."""

from normserve.service.app import create_app
from normserve.service.settings import Settings

__all__ = ["Settings", "create_app"]
