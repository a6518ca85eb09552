"""``GRPCInferenceService``: each RPC reads its message, calls the data plane, writes the answer.

The twin of ``http/routes.py``, with the same three kinds of access: open (liveness, readiness,
server metadata), the inference key when one is set (every model RPC; ``authorization:
Bearer <key>`` metadata) and the admin key (repository control; PERMISSION_DENIED without one).
Views come from ``dataplane`` as the same dicts HTTP sends, parsed into their messages, so the
two protocols cannot say different things.

How a handler becomes a method (parsing, keys, errors, in-flight count, access log) is
``rpc.py``. Methods of Triton's service that normserve does not serve answer UNIMPLEMENTED by
name.
"""

from __future__ import annotations

import grpc
import orjson
from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message

from normserve.service import dataplane
from normserve.service.codecs import inference_pb2 as pb
from normserve.service.errors import BadRequest, NotFound, Unavailable
from normserve.service.grpc.rpc import Access, Call, Calls, unserved
from normserve.service.http.auth import BearerKey
from normserve.service.runtime.state import Runtime
from normserve.service.telemetry.tracing import Tracing

__all__ = ["SERVICE", "UNSERVED", "InferenceServicer"]

SERVICE = "inference.GRPCInferenceService"
# Triton's methods that normserve does not serve, and what they are for.
UNSERVED = {
    "SystemSharedMemoryStatus": "shared memory",
    "SystemSharedMemoryRegister": "shared memory",
    "SystemSharedMemoryUnregister": "shared memory",
    "CudaSharedMemoryStatus": "CUDA shared memory",
    "CudaSharedMemoryRegister": "CUDA shared memory",
    "CudaSharedMemoryUnregister": "CUDA shared memory",
    "TraceSetting": "tracing",
    "LogSettings": "log settings over the API (use NORMSERVE_LOG_LEVEL)",
}


def _version(raw: str) -> str | None:
    return raw or None  # the protocol's empty version is the newest


class InferenceServicer:
    """The RPC handlers over one runtime; ``handler()`` is what the server registers."""

    def __init__(
        self,
        runtime: Runtime,
        api_key: BearerKey | None,
        admin_key: BearerKey | None,
        tracing: Tracing | None = None,
    ) -> None:
        self.runtime = runtime
        self.calls = Calls(SERVICE, runtime, api_key, admin_key, tracing)

    # -- open ---------------------------------------------------------------------------------

    async def server_live(self, _request: pb.ServerLiveRequest, _call: Call) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, _request: pb.ServerReadyRequest, _call: Call) -> Message:
        return pb.ServerReadyResponse(ready=self.runtime.ready and not self.runtime.draining)

    async def server_metadata(self, _request: pb.ServerMetadataRequest, _call: Call) -> Message:
        return ParseDict(dataplane.server_metadata(), pb.ServerMetadataResponse())

    # -- models (the inference key) -----------------------------------------------------------

    async def model_ready(self, request: pb.ModelReadyRequest, _call: Call) -> Message:
        """Ready or not, as Triton answers: an unknown model or version is not ready."""
        try:
            self.runtime.require_ready().get(request.name, _version(request.version))
        except (NotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def model_metadata(self, request: pb.ModelMetadataRequest, _call: Call) -> Message:
        store = self.runtime.require_ready()
        view = dataplane.model_metadata(store, store.get(request.name, _version(request.version)))
        # The V2 gRPC metadata has no parameters field: the rest is HTTP's view, field by field.
        view = {key: value for key, value in view.items() if key != "parameters"}
        return ParseDict(view, pb.ModelMetadataResponse())

    async def model_config(self, request: pb.ModelConfigRequest, _call: Call) -> Message:
        servable = self.runtime.require_ready().get(request.name, _version(request.version))
        view = dataplane.model_config(servable, self.runtime.settings)
        # Triton's parameters are strings: each value as JSON.
        view["parameters"] = {
            key: {"string_value": orjson.dumps(value).decode()}
            for key, value in view["parameters"].items()
        }
        return pb.ModelConfigResponse(config=ParseDict(view, pb.ModelConfig()))

    async def model_statistics(self, request: pb.ModelStatisticsRequest, _call: Call) -> Message:
        """Triton's rule: an empty name is every model, an empty version every version."""
        store = self.runtime.require_ready()
        if not request.name:
            if request.version:
                raise BadRequest("version: give a model name with a version")
            servables = list(store)
        elif not request.version:
            store.versions(request.name)  # NOT_FOUND for an unknown model
            servables = list(store.models[request.name].values())
        else:
            servables = [store.get(request.name, request.version)]
        return ParseDict(dataplane.model_stats(servables), pb.ModelStatisticsResponse())

    async def model_infer(self, request: pb.ModelInferRequest, call: Call) -> bytes:
        servable = self.runtime.require_ready().get(
            request.model_name, _version(request.model_version)
        )
        outcome = await dataplane.infer_grpc(servable, request, call.span)
        call.log.update(
            model=servable.name,
            version=servable.version,
            batch=outcome.batch_size,
            queue_ms=round(outcome.queue_s * 1000, 3),
            compute_ms=round(outcome.compute_s * 1000, 3),
        )
        return outcome.body

    # -- repository control (the admin key) ---------------------------------------------------

    def _one_repository(self, name: str) -> None:
        if name:
            raise BadRequest(
                "repository_name: normserve serves one repository; leave it empty, got "
                f"{name[:64]!r}"
            )

    async def repository_index(self, request: pb.RepositoryIndexRequest, _call: Call) -> Message:
        self._one_repository(request.repository_name)
        rows = self.runtime.index(ready_only=request.ready)
        return ParseDict({"models": rows}, pb.RepositoryIndexResponse())

    async def repository_load(self, request: pb.RepositoryModelLoadRequest, _call: Call) -> Message:
        self._one_repository(request.repository_name)
        if request.parameters:
            raise BadRequest(
                f"parameters {sorted(request.parameters)[:4]} are not supported: normserve loads "
                "models only from the repository directory"
            )
        await self.runtime.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, _call: Call
    ) -> Message:
        self._one_repository(request.repository_name)
        if set(request.parameters) - {"unload_dependents"}:
            raise BadRequest("parameters: only unload_dependents is known")
        await self.runtime.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        """Every method of ``GRPCInferenceService``, by name."""
        unary = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, Access.OPEN),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, Access.OPEN),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, Access.OPEN),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, Access.API_KEY),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, Access.API_KEY),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest, Access.API_KEY),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest, Access.API_KEY),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, Access.API_KEY),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest, Access.ADMIN_KEY),
            "RepositoryModelLoad": (
                self.repository_load,
                pb.RepositoryModelLoadRequest,
                Access.ADMIN_KEY,
            ),
            "RepositoryModelUnload": (
                self.repository_unload,
                pb.RepositoryModelUnloadRequest,
                Access.ADMIN_KEY,
            ),
        }
        methods = {
            name: self.calls.unary(name, handler, request_type, access)
            for name, (handler, request_type, access) in unary.items()
        }
        methods["ModelStreamInfer"] = self.calls.stream_infer(self.model_infer)
        methods.update({name: unserved(name, what) for name, what in UNSERVED.items()})
        return grpc.method_handlers_generic_handler(SERVICE, methods)
