"""Triton Inference Server 2.51 as a peer: the ``tritonserver`` binary and the Python backend
that ship inside the ``nvidia-pytriton`` 0.7.0 wheel, serving the same ONNX file as normserve
through a Python-backend model (``triton_model.py``: onnxruntime, one intra-op thread) with
Triton's dynamic batcher.

Three things make the wheel's binaries run outside PyTriton, found by trying:

- the backend directory must hold the Python backend's library and the stub built for this
  Python (``python_backend_stubs/3.X``); it is made of symlinks, because the stub finds its CUDA
  runtime relative to its real location;
- the stub embeds ``libpython3.X.so.1.0``: ``LD_LIBRARY_PATH`` names this interpreter's
  ``LIBDIR`` so it is the same Python as the environment's, not whichever the system has;
- the embedded interpreter ignores ``PYTHONPATH`` and finds its prefix by looking up
  ``python3`` on ``PATH``: the environment's ``bin`` goes first on ``PATH``, so its
  ``pyvenv.cfg`` gives the model the environment's packages and not the base interpreter's
  (whose numpy 2 made every output arrive empty: the wheel's stub wants numpy < 2).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers.process import PeerCommand
from benchmarks.peers.venvs import VenvSpec, onnxruntime_requirement, shared_libraries
from benchmarks.server_process import HOST, free_port
from normserve.model_repository import DATATYPES, ModelConfig, TensorSpec

__all__ = [
    "MODEL_SCRIPT",
    "TritonLayout",
    "config_pbtxt",
    "find_layout",
    "library_report",
    "remove_shared_memory",
    "triton_command",
    "triton_spec",
    "write_model_repository",
]

MODEL_SCRIPT = Path(__file__).with_name("triton_model.py")
SHM = Path("/dev/shm")


def triton_spec() -> VenvSpec:
    return VenvSpec("triton", ("nvidia-pytriton==0.7.0", onnxruntime_requirement()))


@dataclass(frozen=True)
class TritonLayout:
    """Where the wheel put what we run, and the backend directory made beside it."""

    venv: Path
    server: Path  # bin/tritonserver
    backend_dir: Path  # holds python/{libtriton_python.so, the stub, the utils module}
    stub: Path
    python_backend: Path
    libpython_dir: Path | None  # this interpreter's LIBDIR, when it has libpython

    def env(self) -> dict[str, str]:
        """What tritonserver and its stub need (see the module docstring)."""
        env = {"PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        if self.libpython_dir is not None:
            existing = os.environ.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                [str(self.libpython_dir), *([existing] if existing else [])]
            )
        return env


def _find_one(root: Path, name: str, parent: str | None = None) -> Path:
    found = sorted(
        p for p in root.rglob(name) if p.is_file() and (parent is None or p.parent.name == parent)
    )
    if not found:
        where = f" in a {parent}/ folder" if parent else ""
        raise FileNotFoundError(f"no {name}{where} under {root}: is nvidia-pytriton installed?")
    return found[0]


def find_layout(venv: Path) -> TritonLayout:
    """Locate the server, the Python backend and this Python's stub inside ``venv``, and (re)make
    the backend directory of symlinks next to them."""
    site = venv / "lib"
    server = _find_one(site, "tritonserver", parent="bin")
    python_backend = _find_one(site, "libtriton_python.so")
    utils = python_backend.with_name("triton_python_backend_utils.py")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = _find_one(site, "triton_python_backend_stub", parent=version)
    backend_dir = venv / "triton-backends"
    python_dir = backend_dir / "python"
    shutil.rmtree(backend_dir, ignore_errors=True)
    python_dir.mkdir(parents=True)
    for target in (python_backend, utils, stub):
        (python_dir / target.name).symlink_to(target)
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    has_lib = bool(libdir and soname and (Path(libdir) / soname).exists())
    return TritonLayout(
        venv=venv,
        server=server,
        backend_dir=backend_dir,
        stub=python_dir / stub.name,
        python_backend=python_dir / python_backend.name,
        libpython_dir=Path(libdir) if has_lib else None,
    )


def library_report(layout: TritonLayout) -> dict[str, dict[str, list[str]]]:
    """For the server, the backend and the stub: shared libraries not found, and those taken
    from the system rather than from the wheel (what a machine must provide)."""
    report = {}
    wheel_root = layout.venv.resolve()
    for label, binary in (
        ("tritonserver", layout.server),
        ("libtriton_python.so", layout.python_backend),
        ("triton_python_backend_stub", layout.stub),
    ):
        libraries = shared_libraries(binary.resolve(), layout.env())
        report[label] = {
            "missing": sorted(n for n, path in libraries.items() if path is None),
            "from_system": sorted(
                f"{n} ({path})"
                for n, path in libraries.items()
                if path is not None and not Path(path).resolve().is_relative_to(wheel_root)
            ),
        }
    return report


def _tensors(kind: str, specs: tuple[TensorSpec, ...], batched: bool) -> str:
    items = []
    for spec in specs:
        dims = list(spec.shape[1:] if batched else spec.shape)
        items.append(
            f"  {{ name: {json.dumps(spec.name)} data_type: {DATATYPES[spec.datatype].triton} "
            f"dims: {dims} }}"
        )
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def config_pbtxt(
    config: ModelConfig, onnx_path: Path, *, max_queue_delay_ms: float, intra_op_threads: int
) -> str:
    """Triton's model configuration: the same tensors, the same max batch size, dynamic batching
    with ``max_queue_delay_ms``, one CPU instance of the Python backend."""
    batched = config.max_batch_size > 0
    if batched and any(s.shape[:1] != (-1,) for s in (*config.inputs, *config.outputs)):
        raise ValueError(f"{config.name}: a batched model needs -1 as every tensor's first axis")
    text = (
        f"name: {json.dumps(config.name)}\n"
        'backend: "python"\n'
        f"max_batch_size: {config.max_batch_size}\n"
        + _tensors("input", config.inputs, batched)
        + _tensors("output", config.outputs, batched)
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )
    if batched:
        delay_us = round(max_queue_delay_ms * 1000)
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n"
    parameters = {"onnx_path": str(onnx_path), "intra_op_threads": str(intra_op_threads)}
    for key, value in parameters.items():
        value_text = f"{{ string_value: {json.dumps(value)} }}"
        text += f"parameters {{ key: {json.dumps(key)} value: {value_text} }}\n"
    return text


def write_model_repository(
    root: Path,
    config: ModelConfig,
    onnx_path: Path,
    *,
    max_queue_delay_ms: float = 2.0,
    intra_op_threads: int = 1,
) -> Path:
    """``root/<name>/{config.pbtxt, 1/model.py}``: a Triton model repository for the model."""
    model_dir = root / config.name
    shutil.rmtree(model_dir, ignore_errors=True)
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(
        config_pbtxt(
            config,
            onnx_path.resolve(),
            max_queue_delay_ms=max_queue_delay_ms,
            intra_op_threads=intra_op_threads,
        )
    )
    shutil.copyfile(MODEL_SCRIPT, model_dir / "1" / "model.py")
    return root


def triton_command(layout: TritonLayout, repository: Path, shm_prefix: str) -> PeerCommand:
    """tritonserver on free 127.0.0.1 ports for HTTP, gRPC and metrics."""
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    argv = [
        str(layout.server),
        f"--model-repository={repository}",
        f"--backend-directory={layout.backend_dir}",
        f"--http-address={HOST}",
        f"--http-port={ports['http']}",
        f"--grpc-address={HOST}",
        f"--grpc-port={ports['grpc']}",
        f"--metrics-address={HOST}",
        f"--metrics-port={ports['metrics']}",
        "--allow-gpu-metrics=false",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-timeout-secs=5",
        "--log-verbose=0",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]
    return PeerCommand(argv, ports["http"], env=layout.env(), ports=ports)


def remove_shared_memory(prefix: str) -> list[str]:
    """Remove the Python backend's ``/dev/shm`` regions named ``prefix*`` (left behind only when
    Triton had to be killed); returns the names removed."""
    removed = []
    for region in SHM.glob(f"{prefix}*"):
        region.unlink(missing_ok=True)
        removed.append(region.name)
    return removed
