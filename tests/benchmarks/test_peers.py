"""The peers benchmark's harness: start, ready-wait, load, verification, CPU accounting and
stop-by-group, exercised against normserve and stand-in peers (a second normserve started the
way a peer is, an echo server that answers wrongly). No timing is asserted.

The real peers (Triton, KServe) are hundreds of megabytes to install: the one test that runs
them is marked ``peers`` and skipped unless ``NORMSERVE_BENCH_PEERS_TEST=1`` asks for it, so the
suite never downloads them (``python -m benchmarks --quick --only peers`` is the other way).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.context import Context, run_benchmark
from benchmarks.peers.benchmark import NORMSERVE, QUICK, Options, normserve_contender, run
from benchmarks.peers.load import LoadPlan, compare, make_workload
from benchmarks.peers.process import (
    PeerCommand,
    process_cpu_seconds,
    process_tree,
    running_peer,
    tree_cpu_seconds,
)
from benchmarks.peers.report import chart, markdown
from benchmarks.peers.triton import config_pbtxt
from benchmarks.peers.venvs import VenvSpec, is_current, shared_libraries
from benchmarks.report import write_report
from benchmarks.server_process import free_port, normserve_command
from normserve.model_repository import ModelConfig, TensorSpec, read_entry, scan_model
from tests.service.fake_models import affine_reference, write_entry
from tests.service.process import gone

PLAN = LoadPlan(
    rounds=2,
    concurrency=8,
    duration_s=0.3,
    warmup_requests=40,
    min_requests=40,
    sequential_requests=20,
    timeout_s=60,
)


def _benchmark(options: Options) -> SimpleNamespace:
    """The peers benchmark with these options, as ``run_benchmark`` takes a benchmark."""
    return SimpleNamespace(NAME="peers", measure=lambda ctx: run(ctx, options), chart=chart)


@pytest.fixture
def affine(tmp_path: Path) -> tuple[Path, ModelConfig, Path]:
    write_entry(tmp_path / "repository", "affine", 1)
    entry = scan_model(tmp_path / "repository" / "affine")[-1]
    return tmp_path / "repository", read_entry(entry), entry.onnx_path


def test_the_workload_carries_each_inputs_own_reference(affine):
    _, config, onnx_path = affine
    workload = make_workload(config, onnx_path, count=16, max_rows=4)
    assert len(workload.probes) == len(workload.singles) == 16
    rows = set()
    for probe in workload.probes + workload.singles:
        body = json.loads(probe.raw.split(b"\r\n\r\n", 1)[1])
        (tensor,) = body["inputs"]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        y, z = affine_reference(x)  # an independent reference: float64 numpy
        np.testing.assert_allclose(probe.expected["y"], y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(probe.expected["z"], z, rtol=1e-5, atol=1e-5)
        rows.add(x.shape[0])
    assert rows == {1, 2, 3, 4}
    assert {len(p.expected["y"]) for p in workload.singles} == {1}


@pytest.mark.slow
def test_normserve_beside_a_standin_peer(affine, tmp_path: Path):
    repository, config, onnx_path = affine
    workload = make_workload(config, onnx_path, count=32)
    command = [normserve_command(), "serve", "--repository", str(repository), "--host"]
    port = free_port()
    command += ["127.0.0.1", "--port", str(port)]
    standin = PeerCommand(command, port, env={"NORMSERVE_PROVIDER": "cpu"})
    with contextlib.ExitStack() as stack:
        name, (_, settings, _) = next(iter(NORMSERVE.items()))
        ours = normserve_contender(stack, name, repository, settings, tmp_path / "ours.log")
        peer = stack.enter_context(running_peer("standin", standin, tmp_path / "standin.log"))
        assert peer.ready_s > 0
        assert process_tree(peer.pid)[0] == peer.pid
        result = compare([ours, peer], workload, PLAN, log=lambda _: None)
    for pid in (ours.pid, peer.pid):
        assert gone(pid)
    assert result["orders"] == [[name, "standin"], ["standin", name]]
    for figures in result["servers"].values():
        summary, rounds = figures["summary"], figures["rounds"]
        assert len(rounds) == PLAN.rounds
        assert summary["wrong"] == 0
        per_round = PLAN.warmup_requests + PLAN.sequential_requests
        assert summary["verified"] == sum(r["requests"] for r in rounds) + 2 * per_round
        assert all(r["requests"] >= PLAN.min_requests for r in rounds)
        assert all(r["statuses"] == {"200": r["requests"]} for r in rounds)
        assert all(r["sequential_latency_ms"]["count"] == PLAN.sequential_requests for r in rounds)
        assert summary["server_cpu_ms_per_request"]["min"] > 0
        assert summary["throughput_rps"]["min"] > 0


@pytest.mark.slow
def test_a_peer_answering_wrongly_is_counted_wrong(affine, tmp_path: Path):
    _, config, onnx_path = affine
    workload = make_workload(config, onnx_path, count=8)
    port = free_port()
    echo = PeerCommand(
        [sys.executable, "-m", "benchmarks.echo_server", "--port", str(port)], port
    )  # answers 200 {"ok": true} to everything, health included
    with running_peer("echo", echo, tmp_path / "echo.log") as peer:
        result = compare([peer], workload, PLAN, log=lambda _: None)
    summary = result["servers"]["echo"]["summary"]
    assert summary["verified"] > 0
    assert summary["wrong"] == summary["verified"]
    assert (
        "undecodable" in summary["wrong_examples"][0] or "outputs" in summary["wrong_examples"][0]
    )


@pytest.mark.slow
def test_a_peers_whole_process_group_is_stopped_and_its_cpu_counted(tmp_path: Path):
    # The peer forks a child that burns CPU and ignores SIGTERM: the group is killed all the
    # same, and the child's CPU counts as the peer's.
    port = free_port()
    script = (
        "import signal, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "import time\\nend = time.time() + 60\\nwhile time.time() < end: pass'])\n"
        "print(child.pid, flush=True)\n"
        f"import runpy; sys.argv = ['echo', '--port', '{port}']\n"
        "runpy.run_module('benchmarks.echo_server', run_name='__main__')\n"
    )
    command = PeerCommand([sys.executable, "-c", script], port)
    log = tmp_path / "forking.log"
    with running_peer("forking", command, log, stop_grace_s=1.0) as peer:
        child = int(log.read_text().split()[0])
        assert child in process_tree(peer.pid)
        time.sleep(0.3)
        child_cpu = process_cpu_seconds(child)
        leader_cpu = process_cpu_seconds(peer.pid)
        assert child_cpu > 0.05
        assert tree_cpu_seconds(peer.pid) >= leader_cpu + child_cpu
    assert gone(peer.pid)
    assert gone(child)


def test_the_triton_config_follows_the_model(tmp_path: Path):
    config = ModelConfig(
        name="two",
        version=1,
        inputs=(TensorSpec("a", "FP32", (-1, 1, 8, 8)), TensorSpec("b", "INT64", (-1, 3))),
        outputs=(TensorSpec("out", "FP16", (-1, 10)),),
        max_batch_size=16,
    )
    text = config_pbtxt(config, tmp_path / "m.onnx", max_queue_delay_ms=2.0, intra_op_threads=1)
    assert 'name: "two"' in text
    assert "max_batch_size: 16" in text
    assert '{ name: "a" data_type: TYPE_FP32 dims: [1, 8, 8] }' in text
    assert '{ name: "b" data_type: TYPE_INT64 dims: [3] }' in text
    assert '{ name: "out" data_type: TYPE_FP16 dims: [10] }' in text
    assert "max_queue_delay_microseconds: 2000" in text
    assert f'string_value: "{tmp_path / "m.onnx"}"' in text
    unbatched = ModelConfig("one", 1, config.inputs[:1], config.outputs, max_batch_size=0)
    text = config_pbtxt(unbatched, tmp_path / "m.onnx", max_queue_delay_ms=2, intra_op_threads=1)
    assert "dims: [-1, 1, 8, 8]" in text
    assert "dynamic_batching" not in text


def test_a_venv_is_current_only_for_its_own_stamp(tmp_path: Path):
    spec = VenvSpec("peer", ("somepackage==1.0",))
    path = spec.path(tmp_path)
    assert not is_current(spec, tmp_path)
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").touch()
    (path / ".normserve-peer-stamp.json").write_text(spec.stamp())
    assert is_current(spec, tmp_path)
    assert not is_current(VenvSpec("peer", ("somepackage==2.0",)), tmp_path)


def test_shared_libraries_are_read_from_ldd():
    libraries = shared_libraries(Path(sys.executable).resolve())
    assert any(name.startswith("libc.so") for name in libraries)
    assert all(path is None or Path(path).exists() for path in libraries.values())


@pytest.mark.slow
def test_the_quick_benchmark_without_peers_writes_json_chart_and_table(affine, tmp_path: Path):
    # normserve alone (no peer requested): the benchmark end to end, on the fake model.
    repository, _, _ = affine
    options = Options(repository, model="affine", peers=(), plan=PLAN)
    ctx = Context(quick=True, work_dir=tmp_path / "work", results_dir=tmp_path / "results")
    envelope = run_benchmark(ctx, _benchmark(options), log=lambda _: None)  # type: ignore[arg-type]
    assert (tmp_path / "results" / "peers.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results" / "peers.json").read_text())
    assert saved["quick"] is True
    assert len(saved["load_average_before"]) == 3
    assert set(saved["servers"]) == set(NORMSERVE)
    assert all(s["server"]["name"] == "normserve" for s in saved["servers"].values())
    assert saved["targets"][0]["met"] is None  # no Triton: the target is not measured
    table = "\n".join(markdown(saved))
    for name in NORMSERVE:
        assert f"| {name} |" in table
    assert envelope["servers"].keys() == saved["servers"].keys()
    skipped = {**saved, "servers": {**saved["servers"], "triton": {"skipped": "why | not"}}}
    assert "| Triton | not measured: why / not |" in "\n".join(markdown(skipped))
    assert chart(saved, tmp_path / "again.png")
    # The summary shows the table, beside another tool's JSON that is no benchmark result.
    (tmp_path / "results" / "compare_builds-x.json").write_text('{"what": "not a benchmark"}')
    write_report(tmp_path / "results", update_readme=False, log=lambda _: None)
    summary = (tmp_path / "results" / "SUMMARY.md").read_text()
    assert "#### Beside the peers: Triton and KServe" in summary
    assert "![Beside the peers: Triton and KServe](peers.png)" in summary
    assert table in summary


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.skipif(
    os.environ.get("NORMSERVE_BENCH_PEERS_TEST") != "1",
    reason="installs and runs Triton and KServe (hundreds of MB): NORMSERVE_BENCH_PEERS_TEST=1",
)
def test_the_real_peers_answer_like_normserve(affine, tmp_path: Path):
    repository, _, _ = affine
    options = Options(repository, model="affine", plan=QUICK)
    ctx = Context(quick=True, work_dir=tmp_path / "work", results_dir=tmp_path / "results")
    saved = run_benchmark(ctx, _benchmark(options), log=print)  # type: ignore[arg-type]
    for name in ("triton", "kserve"):
        assert "skipped" not in saved["servers"][name], saved["servers"][name]
        summary = saved["servers"][name]["summary"]
        assert summary["verified"] > 0
        assert summary["wrong"] == 0
