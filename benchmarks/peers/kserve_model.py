"""KServe's Python model server running an ONNX file with onnxruntime (the peers benchmark).

Run with the KServe environment's interpreter, never imported by the project. Configured through
``NORMSERVE_BENCH_KSERVE_*`` variables rather than arguments, because ``kserve`` parses the
command line itself when imported. The model is what KServe's documentation shows for a custom
model: a ``kserve.Model`` whose ``predict`` takes the V2 ``InferRequest`` and returns an
``InferResponse``, one request at a time (the Python server has no dynamic batcher).

KServe binds ``0.0.0.0`` unconditionally; the benchmarks talk only to 127.0.0.1, so uvicorn's
``Config`` is wrapped to bind 127.0.0.1 and to keep the per-request access log off (as for the
other servers). gRPC is not started.
"""

from __future__ import annotations

import os
from typing import Any

import onnxruntime as ort
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.utils.numpy_codec import from_np_dtype
from kserve.utils.utils import generate_uuid

HOST = "127.0.0.1"


class OnnxModel(Model):
    def __init__(self, name: str, path: str, intra_op_threads: int) -> None:
        super().__init__(name)
        self.path = path
        self.intra_op_threads = intra_op_threads
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        feed = {item.name: item.as_numpy() for item in payload.inputs}
        results = self.session.run(self.outputs, feed)
        outputs = []
        for name, result in zip(self.outputs, results, strict=True):
            output = InferOutput(
                name=name, shape=list(result.shape), datatype=from_np_dtype(result.dtype)
            )
            output.set_data_from_numpy(result, binary_data=False)
            outputs.append(output)
        return InferResponse(
            response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=outputs
        )


class _LoopbackConfig(uvicorn.Config):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = HOST
        kwargs["access_log"] = False
        super().__init__(*args, **kwargs)


def main() -> None:
    model = OnnxModel(
        os.environ["NORMSERVE_BENCH_KSERVE_MODEL"],
        os.environ["NORMSERVE_BENCH_KSERVE_ONNX"],
        int(os.environ.get("NORMSERVE_BENCH_KSERVE_INTRA_OP_THREADS", "1")),
    )
    uvicorn.Config = _LoopbackConfig  # type: ignore[misc]
    server = ModelServer(
        http_port=int(os.environ["NORMSERVE_BENCH_KSERVE_PORT"]),
        enable_grpc=False,
        enable_latency_logging=False,
    )
    server.start([model])


if __name__ == "__main__":
    main()
