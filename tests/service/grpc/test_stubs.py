"""The committed stubs are what inference.proto generates, and our messages are wire-compatible
with tritonclient's (an independent copy of the protocol): same names, numbers and types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2 as triton_pb

from normserve.service.codecs import inference_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]


def test_committed_stubs_are_generated_from_the_proto():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_grpc_stubs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def fields(message: Descriptor) -> dict[str, tuple[int, int, str]]:
    return {
        f.name: (f.number, f.type, f.message_type.full_name if f.message_type else "")
        for f in message.fields
    }


def all_messages(descriptor: Descriptor) -> list[Descriptor]:
    found = [descriptor]
    for nested in descriptor.nested_types:
        found += all_messages(nested)
    return found


OURS = [m for top in pb.DESCRIPTOR.message_types_by_name.values() for m in all_messages(top)]


@pytest.mark.parametrize("message", OURS, ids=lambda m: m.full_name)
def test_every_field_matches_triton(message):
    theirs = triton_pb.DESCRIPTOR.pool.FindMessageTypeByName(message.full_name)
    want = fields(theirs)
    for name, got in fields(message).items():
        assert got == want[name], f"{message.full_name}.{name}"


def test_every_method_matches_triton():
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert method.server_streaming == other.server_streaming
