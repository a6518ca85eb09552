"""Generate ``service/codecs/inference_pb2.py`` (and its ``.pyi``) from ``inference.proto``.

    python scripts/generate_grpc_stubs.py           # rewrite the committed stubs
    python scripts/generate_grpc_stubs.py --check   # exit 1 when they are out of date

Needs ``grpcio-tools`` (the dev extra); the serving install only needs ``protobuf``. The stubs
are committed so that the serving image needs no compiler.

One change to protoc's output: the descriptors go into a private pool instead of protobuf's
default one. The protocol fixes the package name (``inference``), and ``tritonclient.grpc``
registers its own ``inference.*`` messages in the default pool: two registrations of one name in
one pool fail at import, so a process (a test, a benchmark) could not load both. The wire format
does not involve the pool.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODECS = ROOT / "service" / "codecs"
PROTO = "inference.proto"
OUTPUTS = ("inference_pb2.py", "inference_pb2.pyi")
DEFAULT_POOL = "_descriptor_pool.Default()"
PRIVATE_POOL = "_descriptor_pool.DescriptorPool()"
HEADER = (
    "# Generated from inference.proto by scripts/generate_grpc_stubs.py (grpcio-tools); do not\n"
    "# edit. Descriptors live in a private pool (see the script), not protobuf's default one.\n"
)


def generate() -> dict[str, str]:
    """The stubs as protoc writes them for this checkout's ``inference.proto``, adjusted."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{CODECS}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            str(CODECS / PROTO),
        ]
        subprocess.run(command, check=True)
        texts = {name: (Path(tmp) / name).read_text() for name in OUTPUTS}
    code = texts["inference_pb2.py"]
    if code.count(DEFAULT_POOL) != 1:
        raise SystemExit(f"protoc's output no longer has one {DEFAULT_POOL}: update this script")
    texts["inference_pb2.py"] = HEADER + code.replace(DEFAULT_POOL, PRIVATE_POOL)
    texts["inference_pb2.pyi"] = HEADER + texts["inference_pb2.pyi"]
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = CODECS / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python scripts/generate_grpc_stubs.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
