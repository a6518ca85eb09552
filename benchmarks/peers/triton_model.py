"""A Triton Python-backend model running an ONNX file with onnxruntime (the peers benchmark).

Copied into the generated Triton model repository as ``<model>/1/model.py`` and run by Triton's
Python backend stub inside the Triton environment, never imported by the project: it imports
``triton_python_backend_utils``, which only the stub provides. The ONNX file and the intra-op
thread count come from ``config.pbtxt``'s parameters. Triton's dynamic batcher hands
``execute`` several requests: their inputs are concatenated along the batch axis, run once, and
the outputs split back in order, as normserve's batcher does.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            parameters["onnx_path"], options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            per_request = [
                [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs]
                for r in requests
            ]
            feed = {
                name: np.concatenate([arrays[k] for arrays in per_request])
                for k, name in enumerate(self.inputs)
            }
            results = self.session.run(self.outputs, feed)
        except Exception as exc:  # every request of the batch gets the error, none is dropped
            error = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for arrays in per_request:
            rows = len(arrays[0])
            tensors = [  # views: the stub copies each tensor into shared memory
                pb_utils.Tensor(name, result[start : start + rows])
                for name, result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += rows
        return responses
