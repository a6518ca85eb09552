"""One servable model version: its config and its ONNX Runtime session."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort

from normserve.model_repository import (
    ModelConfig,
    RepositoryError,
    TensorSpec,
    VersionEntry,
    numpy_dtype,
    read_entry,
    v2_datatype,
)
from normserve.service.runtime.providers import CUDA
from normserve.service.settings import Settings

__all__ = ["LoadedModel", "check_golden_probe", "load_model", "tied_axes"]

log = logging.getLogger("normserve.service")


@dataclass(frozen=True)
class LoadedModel:
    """A session created once at load; ``run`` is thread-safe (ORT sessions are)."""

    config: ModelConfig
    session: ort.InferenceSession
    providers: tuple[str, ...]
    # Input axes besides the batch that the graph names alike, so must agree in a request
    # (e.g. the sequence length of ``tokens`` and ``mask``): groups of (input, axis).
    tied_axes: tuple[tuple[tuple[str, int], ...], ...] = ()
    # Median milliseconds of a batch of one sample and of a full batch, timed at load (None:
    # not timed, or one sample over the inline bound; see _ready_model).
    batch_ms: tuple[float, float] | None = None
    # Threads ONNX Runtime uses inside one operator (0: its own choice, one per core).
    intra_op_threads: int = 0
    # Median milliseconds of one sample, timed at load; None: not timed, or clearly over the
    # inline bound (see time_one_sample).
    one_sample_ms: float | None = None

    @property
    def input_sensitive(self) -> bool:
        """Whether a request's own sizes or values may make the graph fail: a dynamic axis
        besides the batch (a UNet's side not a multiple of 16), or an integer input (a token
        id beyond the embedding)."""
        return any(
            -1 in spec.shape[1:] or spec.datatype.startswith(("INT", "UINT"))
            for spec in self.config.inputs
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> int:
        return self.config.version

    def input_spec(self, name: str) -> TensorSpec | None:
        return self.config.input_spec(name)

    def output_spec(self, name: str) -> TensorSpec | None:
        return self.config.output_spec(name)

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Run the graph; ``outputs`` are names from the config, returned in that order."""
        return self.session.run(outputs, inputs)

    def time_one_sample(self, bound_ms: float, runs: int = 7) -> float | None:
        """Median milliseconds of a batch of one sample (of zeros), or None when not worth
        knowing: a dynamic axis besides the batch (the cost depends on the request), a bound
        of 0, or a model clearly over the bound.

        The first run is left out of the median (it pays for buffers the next ones reuse),
        and a model is judged clearly over the bound when its first two runs both took over
        four times the bound: one slow run (a page fault, a busy core) made a model near the
        bound run inline after one start and on the thread after the next."""
        if bound_ms <= 0 or any(-1 in spec.shape[1:] for spec in self.config.inputs):
            return None
        return self.time_batch(1, runs, give_up_ms=4 * bound_ms)

    def time_batch(
        self, samples: int, runs: int = 7, give_up_ms: float | None = None
    ) -> float | None:
        """Median milliseconds of a batch of ``samples`` (of zeros) over ``runs`` runs after a
        first one left out; None when the first two runs both took over ``give_up_ms``."""
        feed = {
            spec.name: np.zeros((samples, *spec.shape[1:]), dtype=numpy_dtype(spec.datatype))
            for spec in self.config.inputs
        }
        outputs = [spec.name for spec in self.config.outputs]
        times: list[float] = []
        for _ in range(runs + 1):
            start = time.perf_counter()
            self.run(feed, outputs)
            times.append((time.perf_counter() - start) * 1000.0)
            if give_up_ms is not None and len(times) == 2 and min(times) > give_up_ms:
                return None  # clearly over: a large model pays two runs, not eight
        return statistics.median(times[1:])

    def warm_up(self) -> None:
        """One inference on one sample of zeros, so the first request pays no lazy set-up.

        A dynamic axis besides the batch (-1) takes the golden probe's size for that input,
        a size the export proved, or 1 without a probe.
        """
        probe = self.config.golden_probe
        feed = {}
        for spec in self.config.inputs:
            sizes = probe.inputs[spec.name].shape if probe and spec.name in probe.inputs else ()
            shape = [
                size if size >= 0 else (sizes[axis] if axis < len(sizes) else 1)
                for axis, size in enumerate(spec.shape)
            ]
            feed[spec.name] = np.zeros((1, *shape[1:]), dtype=numpy_dtype(spec.datatype))
        self.run(feed, [spec.name for spec in self.config.outputs])


def tied_axes(session: ort.InferenceSession) -> tuple[tuple[tuple[str, int], ...], ...]:
    """Groups of input axes (besides the batch) that share one symbolic size in the graph."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for node in session.get_inputs():
        for axis, size in enumerate(node.shape):
            if axis > 0 and isinstance(size, str) and size:
                groups.setdefault(size, []).append((node.name, axis))
    return tuple(tuple(group) for group in groups.values() if len(group) > 1)


def _check_graph(config: ModelConfig, session: ort.InferenceSession, where: str) -> None:
    """The graph's names, datatypes and ranks must be what model.json promises."""
    for kind, declared, actual in (
        ("input", config.inputs, session.get_inputs()),
        ("output", config.outputs, session.get_outputs()),
    ):
        graph = {a.name: a for a in actual}
        if {s.name for s in declared} != set(graph):
            raise RepositoryError(
                f"{where}: model.json {kind}s {[s.name for s in declared]} differ from the "
                f"graph's {list(graph)}"
            )
        for spec in declared:
            node = graph[spec.name]
            if v2_datatype(onnx=node.type) != spec.datatype:
                raise RepositoryError(
                    f"{where}: {kind} {spec.name!r} is {node.type} in the graph, "
                    f"{spec.datatype} in model.json"
                )
            if len(node.shape) != len(spec.shape):
                raise RepositoryError(
                    f"{where}: {kind} {spec.name!r} has rank {len(node.shape)} in the graph, "
                    f"{len(spec.shape)} in model.json"
                )


def check_golden_probe(model: LoadedModel, where: str) -> None:
    """Replay the probe recorded at export; ``RepositoryError`` unless the outputs match.

    This catches what hashes cannot: a graph that loads but computes something else on this
    machine's ONNX Runtime and provider (a wrong build, a provider bug, a swapped file).
    """
    probe = model.config.golden_probe
    if probe is None:
        return
    declared_inputs = {s.name for s in model.config.inputs}
    if set(probe.inputs) != declared_inputs:
        raise RepositoryError(
            f"{where}: golden probe inputs {sorted(probe.inputs)} differ from the model's "
            f"{sorted(declared_inputs)}"
        )
    for name in probe.outputs:
        if model.output_spec(name) is None:
            raise RepositoryError(f"{where}: golden probe output {name!r} is not a model output")
    feed = {
        name: array.astype(numpy_dtype(model.input_spec(name).datatype), copy=False)  # type: ignore[union-attr]
        for name, array in probe.inputs.items()
    }
    names = list(probe.outputs)
    try:
        actual = model.run(feed, names)
    except Exception as exc:
        raise RepositoryError(f"{where}: golden probe inference failed: {exc}") from exc
    for name, got in zip(names, actual, strict=True):
        problem = probe.mismatch(name, got)
        if problem is not None:
            raise RepositoryError(f"{where}: golden probe output {name!r} {problem}")


def _session_options(settings: Settings, intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = (
        ort.ExecutionMode.ORT_SEQUENTIAL
        if settings.inter_op_threads == 1
        else ort.ExecutionMode.ORT_PARALLEL
    )
    options.log_severity_level = 3
    spin = "1" if settings.intra_op_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


def _provider_list(providers: list[str], settings: Settings) -> list[str | tuple[str, dict]]:
    return [
        (name, {"device_id": settings.cuda_device_id}) if name == CUDA else name
        for name in providers
    ]


def load_model(entry: VersionEntry, settings: Settings, providers: list[str]) -> LoadedModel:
    """Read, check, create the session, warm it up, replay its golden probe and time it.

    With ``intra_op_threads`` unset (auto), a CPU version whose one sample runs within or near
    the inline bound is loaded again with one intra-op thread (``_single_threaded``).
    ``RepositoryError`` on any failure: such a version is never served.
    """
    config = read_entry(entry)
    threads = settings.intra_op_threads or 0
    model = _ready_model(entry, config, settings, providers, threads)
    if settings.intra_op_threads is None and CUDA not in model.providers:
        model = _single_threaded(model, entry, settings, providers)
    log.info(
        "loaded %s version %d on %s (%s; %s)",
        config.name,
        config.version,
        ", ".join(model.providers),
        "golden probe matched" if config.golden_probe else "no golden probe: warm-up only",
        f"intra-op threads: {model.intra_op_threads or 'one per core'}",
    )
    return model


def _ready_model(
    entry: VersionEntry,
    config: ModelConfig,
    settings: Settings,
    providers: list[str],
    intra_op_threads: int,
) -> LoadedModel:
    """One session of ``entry``, checked against its config, warmed up, proven by its golden
    probe and timed (``time_one_sample``, then a full batch when one sample is within the
    inline bound)."""
    where = str(entry.path)
    try:
        session = ort.InferenceSession(
            str(entry.onnx_path),
            _session_options(settings, intra_op_threads),
            providers=_provider_list(providers, settings),
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise RepositoryError(f"{where}: ONNX Runtime cannot load model.onnx: {exc}") from exc
    if settings.provider == "cuda" and CUDA not in session.get_providers():
        raise RepositoryError(
            f"{where}: provider 'cuda' requested but ONNX Runtime fell back to "
            f"{session.get_providers()} (CUDA or cuDNN libraries missing?)"
        )
    _check_graph(config, session, where)
    model = LoadedModel(
        config=config,
        session=session,
        providers=tuple(session.get_providers()),
        tied_axes=tied_axes(session),
        intra_op_threads=intra_op_threads,
    )
    try:
        model.warm_up()
    except Exception as exc:
        raise RepositoryError(f"{where}: warm-up inference failed: {exc}") from exc
    check_golden_probe(model, where)
    one = model.time_one_sample(settings.inline_batch_ms)
    batch_ms = None
    if one is not None and one <= settings.inline_batch_ms:
        full = model.time_batch(config.max_batch_size)
        batch_ms = None if full is None else (one, full)
    return replace(model, one_sample_ms=one, batch_ms=batch_ms)


def _single_threaded(
    model: LoadedModel, entry: VersionEntry, settings: Settings, providers: list[str]
) -> LoadedModel:
    """``model`` again with one intra-op thread, when one sample of it is within the inline
    bound or near it (within four times the bound: the pool's own wake-ups may be what puts it
    over). Its operators are too small to share out, and waking the pool for each cost the
    event loop more than it saved (docs/benchmarks.md). The first session is kept when the
    second is not within the bound."""
    if model.one_sample_ms is None:
        return model
    single = _ready_model(entry, model.config, settings, providers, 1)
    return single if single.batch_ms is not None else model
