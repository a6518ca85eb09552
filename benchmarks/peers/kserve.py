"""KServe's Python model server as a peer: ``kserve`` 0.21 in its own environment, running
``kserve_model.py`` (the same ONNX file through onnxruntime, one intra-op thread)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.peers.process import PeerCommand
from benchmarks.peers.venvs import VenvSpec, onnxruntime_requirement
from benchmarks.server_process import free_port

__all__ = ["SERVER_SCRIPT", "kserve_command", "kserve_spec"]

SERVER_SCRIPT = Path(__file__).with_name("kserve_model.py")


def kserve_spec() -> VenvSpec:
    return VenvSpec("kserve", ("kserve==0.21.*", onnxruntime_requirement()))


def kserve_command(
    venv: Path, onnx_path: Path, model: str, *, intra_op_threads: int = 1
) -> PeerCommand:
    """The KServe server for ``model`` on a free 127.0.0.1 port (HTTP only)."""
    port = free_port()
    env = {
        "NORMSERVE_BENCH_KSERVE_MODEL": model,
        "NORMSERVE_BENCH_KSERVE_ONNX": str(onnx_path.resolve()),
        "NORMSERVE_BENCH_KSERVE_PORT": str(port),
        "NORMSERVE_BENCH_KSERVE_INTRA_OP_THREADS": str(intra_op_threads),
    }
    # -I: the script's folder (this package, whose kserve.py would shadow KServe) stays off
    # sys.path, and no PYTHON* variable of ours reaches KServe's interpreter.
    argv = [str(venv / "bin" / "python"), "-I", str(SERVER_SCRIPT)]
    return PeerCommand(argv, port, env=env, ports={"http": port})
