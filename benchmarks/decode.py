"""Benchmark 4, payload decode of a 1x3x224x224 FP32 tensor: JSON vs binary.

In-process: the service's own request path from body bytes to the input array
(``split_body`` → ``parse_json_body`` → ``decode_infer_request``) for each body kind, against a
model whose input is 3x224x224, interleaved. End to end: the same two bodies posted
sequentially to a real server serving that model, so transport and encoding are seen too.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bare import load_served_model
from benchmarks.bench_models import PAYLOAD_ARCH
from benchmarks.charts import COLORS, figure, save
from benchmarks.context import Context, Target
from benchmarks.features import env_for, server_metadata, supports_binary
from benchmarks.http_client import HttpConnection
from benchmarks.probes import CallProbe, HttpProbe
from benchmarks.server_process import HOST, running_server
from benchmarks.stats import interleave, spread
from benchmarks.v2_payload import (
    HEADER_LENGTH,
    binary_body,
    decode_response,
    infer_request,
    json_body,
)

NAME = "decode"
TARGETS_MS = {"binary": 0.1, "json": 12.0}
SERVER = {"provider": "cpu", "log_level": "warning"}


def _decoder(model: Any) -> tuple[Any, str]:
    """The service's body → arrays path, as one callable ``(body, header_length) -> arrays``."""
    from normserve.service.codecs import v2 as codec

    if hasattr(codec, "split_body"):

        def decode(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
            header, binary = codec.split_body(body, header_length)
            return codec.decode_infer_request(codec.parse_json_body(header), model, binary).inputs

        return decode, "split_body + parse_json_body + decode_infer_request"

    def decode_json(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
        if header_length is not None:
            raise RuntimeError("this service has no binary codec")
        return codec.decode_infer_request(codec.parse_json_body(body), model).inputs

    return decode_json, "parse_json_body + decode_infer_request"


def measure(ctx: Context) -> dict[str, Any]:
    bench = ctx.workspace.model(PAYLOAD_ARCH)
    repository = ctx.workspace.repository_of(NAME, [PAYLOAD_ARCH])
    model = load_served_model(repository / bench.name / "1", {"provider": "cpu"})
    input_name = bench.checkpoint.input.name
    x = bench.inputs[:1].numpy()  # (1, 3, 224, 224) float32
    feed = {input_name: x}
    decode, path = _decoder(model)
    bodies: dict[str, tuple[bytes, str | None]] = {"json": (json_body(feed), None)}
    binary, header_length = binary_body(feed, binary_output=True)
    bodies["binary"] = (binary, str(header_length))
    in_process: dict[str, Any] = {}
    for kind, (body, length) in list(bodies.items()):
        try:
            decoded = decode(body, length)[input_name]
        except Exception as exc:
            ctx.log(f"   {kind}: the service cannot decode it: {exc}")
            del bodies[kind]
            continue
        if decoded.shape != x.shape or not np.array_equal(decoded, x):
            raise RuntimeError(f"{kind} decode does not reproduce the tensor")
        in_process[kind] = CallProbe(lambda b=body, h=length: decode(b, h))
    for probe in in_process.values():
        probe.block(3)
        probe.times.clear()
    rounds = ctx.pick(9, 3)
    calls = {"json": ctx.pick(5, 2), "binary": ctx.pick(300, 50)}
    samples = interleave(
        {k: (lambda p=p, k=k: p.block(calls[k])) for k, p in in_process.items()}, rounds
    )
    decode_ms = {k: spread(v).scaled(1e3).to_dict() for k, v in samples.items()}
    ctx.log(
        "   in-process decode: "
        + ", ".join(f"{k} {v['median']:.4f} ms" for k, v in decode_ms.items())
    )

    end_to_end: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            running_server(repository, ctx.work_dir / "logs" / "decode.log", env=env_for(SERVER))
        )
        binary_ok = supports_binary(server_metadata(HOST, server.port))
        conn = stack.enter_context(HttpConnection(HOST, server.port))
        host = f"{HOST}:{server.port}"
        session = model.session
        outputs = [o.name for o in session.get_outputs()]
        probes: dict[str, Any] = {"bare": CallProbe(lambda: session.run(outputs, feed))}
        for kind in ("json", "binary") if binary_ok else ("json",):
            request = infer_request(host, bench.name, feed, binary=kind == "binary")
            expected = session.run(outputs, feed)[0]
            got = next(iter(decode_response(conn.request(request)).values()))
            if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
                raise RuntimeError(f"served {kind} output differs from the bare session's")
            probes[kind] = HttpProbe(conn, request)
        for probe in probes.values():
            probe.block(3)
            probe.times.clear()
        e2e_calls = {"bare": ctx.pick(50, 10), "json": ctx.pick(5, 2), "binary": ctx.pick(30, 10)}
        e2e = interleave(
            {k: (lambda p=p, k=k: p.block(e2e_calls[k])) for k, p in probes.items()}, rounds
        )
        end_to_end = {k: spread(v).scaled(1e3).to_dict() for k, v in e2e.items()}
    ctx.log(
        "   end to end: " + ", ".join(f"{k} {v['median']:.3f} ms" for k, v in end_to_end.items())
    )

    targets = []
    for kind, limit in TARGETS_MS.items():
        value = decode_ms.get(kind, {}).get("median")
        targets.append(
            Target(
                name=f"{kind} decode, 1x3x224x224 FP32",
                goal=f"≤ {limit} ms",
                value=None if value is None else round(value, 4),
                unit="ms",
                met=None if value is None else value <= limit,
                note="" if value is not None else "the service does not offer this body kind",
            ).to_dict()
        )
    return {
        "config": {
            "tensor": {"shape": list(x.shape), "datatype": "FP32", "bytes": int(x.nbytes)},
            "decode_path": path,
            "body_bytes": {k: len(b) for k, (b, _) in bodies.items()},
            "binary_header": HEADER_LENGTH,
            "method": "in process: per round one block per body kind (median of the block), "
            "rotating order; end to end: sequential requests on one keep-alive connection",
        },
        "decode_ms": decode_ms,
        "end_to_end_ms": end_to_end,
        "targets": targets,
    }


def chart(result: dict[str, Any], path: Path) -> bool:
    fig, axes = figure(1, 2, width=5.5)
    for ax, key, title in (
        (axes[0][0], "decode_ms", "in-process decode (service codec)"),
        (axes[0][1], "end_to_end_ms", "end to end, one request (bare = session.run)"),
    ):
        data = result[key]
        kinds = list(data)
        medians = [data[k]["median"] for k in kinds]
        ax.bar(
            range(len(kinds)),
            medians,
            yerr=[
                [data[k]["median"] - data[k]["min"] for k in kinds],
                [data[k]["max"] - data[k]["median"] for k in kinds],
            ],
            color=[COLORS.get(k, "#9467bd") for k in kinds],
            capsize=3,
        )
        for i, m in enumerate(medians):
            ax.annotate(f"{m:.3g} ms", (i, m), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(kinds)))
        ax.set_xticklabels(kinds)
        ax.set_yscale("log")
        ax.set_ylabel("ms (median, min-max)")
        ax.set_title(title)
    mib = result["config"]["tensor"]["bytes"] / 2**20
    save(fig, path, f"Payload decode: 1x3x224x224 FP32 ({mib:.2f} MiB), JSON vs binary", result)
    return True
