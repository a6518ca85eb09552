"""A user's own models, through the front door and served: tritonclient against a real server.

A scratch project with its own ``models/`` package trains three architectures in plain
PyTorch and saves them the usual ways; ``normserve export`` (a subprocess, as a user runs it)
writes them into one repository; one ``normserve serve`` answers the official
``tritonclient[http]``:

- ``fusion``: two float32 inputs (an image and a metadata vector), two outputs (a tuple),
  saved as ``{'epoch', 'model_state_dict', 'optimizer_state_dict'}``;
- ``half``: a float16 model saved as ``model.half().state_dict()``, exported with only
  ``--input-shape`` (the input takes the weights' dtype);
- ``tagger``: int64 token ids and a float mask sharing a dynamic sequence axis, per-token
  outputs, saved as a Lightning-style ``{'state_dict': {'model.…': …}}``.

The reference is independent of the export and the server: the eager model in float64 on the
same inputs, computed in the scratch project before anything is exported.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.service.process import Server, running_server

MODELS = '''
import torch
from torch import nn


def _trained(model: nn.Module, *shapes, steps: int = 4) -> nn.Module:
    """A few steps of training, so BatchNorm statistics and weights are not fresh."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        inputs = [s() for s in shapes]
        outputs = model(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        loss = sum(o.float().square().mean() for o in outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # statistics far from (0, 1), some tiny variances, negative gammas
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.uniform_(-1.0, 1.0)
                module.running_var.uniform_(0.2, 3.0)
                module.running_var[0] = 1e-4
                module.weight.uniform_(-1.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.weight[n - 1] = -abs(module.weight[n - 1]) - 0.1
    return model


class Fusion(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.vector = nn.Linear(4, 8)
        self.vector_bn = nn.BatchNorm1d(8)
        self.classes = nn.Linear(16, 5)
        self.box = nn.Linear(16, 2)

    def forward(self, image, meta):
        x = torch.relu(self.bn(self.conv(image))).mean(dim=(2, 3))
        m = torch.relu(self.vector_bn(self.vector(meta)))
        h = torch.cat([x, m], dim=1)
        return self.classes(h), self.box(h)


class Half(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 4)

    def forward(self, tokens, mask):
        x = self.embed(tokens).transpose(1, 2)
        x = torch.relu(self.bn(self.conv(x))).transpose(1, 2)
        return self.out(x) * mask.unsqueeze(-1)


def fusion() -> Fusion:
    return Fusion()


def half() -> Half:
    return Half()


def tagger() -> Tagger:
    return Tagger()
'''

TRAIN = """
import numpy as np
import torch
from models.heads import Fusion, Half, Tagger, _trained

torch.manual_seed(0)
rng = np.random.default_rng(1)

fusion = _trained(Fusion(), lambda: torch.randn(16, 3, 8, 8), lambda: torch.randn(16, 4)).eval()
torch.save(
    {"epoch": 3, "model_state_dict": fusion.state_dict(), "optimizer_state_dict": {}},
    "fusion.pt",
)
image = rng.normal(size=(6, 3, 8, 8)).astype(np.float32)
meta = rng.normal(size=(6, 4)).astype(np.float32)
with torch.no_grad():
    ref = fusion.double()(torch.from_numpy(image).double(), torch.from_numpy(meta).double())
np.savez("fusion_ref.npz", image=image, meta=meta, logits=ref[0].numpy(), box=ref[1].numpy())

half = _trained(Half(), lambda: torch.randn(16, 1, 8, 8)).eval()
torch.save(half.half().state_dict(), "half.pt")
x = rng.normal(size=(5, 1, 8, 8)).astype(np.float16)
with torch.no_grad():
    ref = half.double()(torch.from_numpy(x).double())
np.savez("half_ref.npz", x=x, out=ref.numpy())

tagger = _trained(
    Tagger(), lambda: torch.randint(0, 50, (8, 12)), lambda: torch.ones(8, 12)
).eval()
torch.save({"state_dict": {f"model.{k}": v for k, v in tagger.state_dict().items()}}, "tagger.ckpt")
refs = {}
for length in range(3, 15):
    tokens = rng.integers(0, 50, size=(2, length)).astype(np.int64)
    mask = (rng.random(size=(2, length)) > 0.2).astype(np.float32)
    with torch.no_grad():
        out = tagger.double()(torch.from_numpy(tokens), torch.from_numpy(mask).double())
    refs[f"tokens_{length}"], refs[f"mask_{length}"], refs[f"out_{length}"] = tokens, mask, out
np.savez("tagger_ref.npz", **{k: np.asarray(v) for k, v in refs.items()})
"""

EXPORTS = {
    "fusion": [
        "fusion.pt",
        "--arch=models.heads:fusion",
        "--input=image:3,8,8",
        "--input=meta:4",
        "--output-names=logits,box",
    ],
    "half": ["half.pt", "--arch=models.heads:half", "--input-shape=1,8,8"],
    "tagger": [
        "tagger.ckpt",
        "--arch=models.heads:tagger",
        "--input=tokens:12:int64",
        "--input=mask:12",
        "--dynamic-axes=tokens:1",
        "--dynamic-axes=mask:1",
    ],
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scratch project: its own models/ package, trained checkpoints, float64 references,
    and the three exports in ``repo/``."""
    root = tmp_path_factory.mktemp("user-project")
    (root / "models").mkdir()
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "heads.py").write_text(textwrap.dedent(MODELS))
    (root / "train.py").write_text(textwrap.dedent(TRAIN))
    subprocess.run([sys.executable, "train.py"], cwd=root, check=True, timeout=300)
    normserve = str(Path(sys.executable).parent / "normserve")
    for name, args in EXPORTS.items():
        done = subprocess.run(
            [normserve, "export", *args, "--repository=repo", f"--name={name}"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"export {name}: {done.stdout}\n{done.stderr}"
    return root


@pytest.fixture(scope="module")
def server(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("user-exports-log") / "server.log"
    env = {"NORMSERVE_MAX_QUEUE_DELAY_MS": "5", "NORMSERVE_INTRA_OP_THREADS": "1"}
    with running_server(project / "repo", log, env) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.host_port, network_timeout=30.0)
    yield c
    c.close()


def given(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def assert_close(got: np.ndarray, reference: np.ndarray, eps: float) -> None:
    """Against float64 eager: within 64 machine epsilons of the served dtype times the
    reference's scale (a wrong fold is off by a large fraction of the scale)."""
    scale = max(1.0, float(np.abs(reference).max()))
    error = float(np.abs(got.astype(np.float64) - reference).max())
    assert error <= 64 * eps * scale, f"max error {error:.3g} > {64 * eps * scale:.3g}"


def test_metadata_lists_every_tensor(client):
    fusion = client.get_model_metadata("fusion")
    assert fusion["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, 8, 8]},
        {"name": "meta", "datatype": "FP32", "shape": [-1, 4]},
    ]
    assert fusion["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 5]},
        {"name": "box", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert client.get_model_metadata("half")["inputs"][0]["datatype"] == "FP16"
    tagger = client.get_model_metadata("tagger")
    assert [(t["datatype"], t["shape"]) for t in tagger["inputs"]] == [
        ("INT64", [-1, -1]),
        ("FP32", [-1, -1]),
    ]
    assert tagger["outputs"][0]["shape"] == [-1, -1, 4]
    config = client.get_model_config("fusion")
    assert [i["name"] for i in config["input"]] == ["image", "meta"]
    assert [o["dims"] for o in config["output"]] == [[5], [2]]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_two_inputs_two_outputs(client, project, binary):
    ref = np.load(project / "fusion_ref.npz")
    inputs = [
        given("image", ref["image"], "FP32", binary),
        given("meta", ref["meta"], "FP32", binary),
    ]
    both = client.infer("fusion", inputs)  # no outputs asked: every output, in model order
    assert [o["name"] for o in both.get_response()["outputs"]] == ["logits", "box"]
    assert_close(both.as_numpy("logits"), ref["logits"], np.finfo(np.float32).eps)
    assert_close(both.as_numpy("box"), ref["box"], np.finfo(np.float32).eps)
    box_only = client.infer(
        "fusion", inputs, outputs=[triton.InferRequestedOutput("box", binary_data=binary)]
    )
    assert [o["name"] for o in box_only.get_response()["outputs"]] == ["box"]
    assert_close(box_only.as_numpy("box"), ref["box"], np.finfo(np.float32).eps)


def test_concurrent_requests_batch_and_split_every_tensor(server, project):
    """Requests of 1..3 samples at once: the batcher concatenates both inputs and splits both
    outputs; each answer must be its own request's."""
    ref = np.load(project / "fusion_ref.npz")

    def one(i: int) -> tuple[float, float]:
        rows = [(i + k) % 6 for k in range(1 + i % 3)]
        c = triton.InferenceServerClient(server.host_port, network_timeout=30.0)
        try:
            inputs = [
                given("image", ref["image"][rows], "FP32", i % 2 == 0),
                given("meta", ref["meta"][rows], "FP32", i % 2 == 0),
            ]
            result = c.infer("fusion", inputs)
        finally:
            c.close()
        return (
            float(np.abs(result.as_numpy("logits") - ref["logits"][rows]).max()),
            float(np.abs(result.as_numpy("box") - ref["box"][rows]).max()),
        )

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        errors = list(pool.map(one, range(96)))
    assert max(max(e) for e in errors) < 1e-4
    stats = triton.InferenceServerClient(server.host_port).get_inference_statistics("fusion")
    sizes = [b["batch_size"] for b in stats["model_stats"][0]["batch_stats"]]
    assert max(sizes) > 3, f"no two requests shared a batch: batch sizes {sizes}"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_float16_model(client, project, binary):
    ref = np.load(project / "half_ref.npz")
    result = client.infer(
        "half",
        [given("input", ref["x"], "FP16", binary)],
        outputs=[triton.InferRequestedOutput("output", binary_data=binary)],
    )
    assert result.get_response()["outputs"][0]["datatype"] == "FP16"
    out = result.as_numpy("output")
    assert out.dtype == np.float16
    assert_close(out, ref["out"], float(np.finfo(np.float16).eps))


def test_dynamic_sequence_lengths_under_concurrency(server, project):
    """Lengths 3..14 at once: requests of one length share batches, others do not mix."""
    ref = np.load(project / "tagger_ref.npz")

    def one(i: int) -> float:
        length = 3 + i % 12
        c = triton.InferenceServerClient(server.host_port, network_timeout=30.0)
        try:
            result = c.infer(
                "tagger",
                [
                    given("tokens", ref[f"tokens_{length}"], "INT64", i % 2 == 0),
                    given("mask", ref[f"mask_{length}"], "FP32", i % 2 == 0),
                ],
            )
        finally:
            c.close()
        out = result.as_numpy("output")
        assert out.shape == (2, length, 4)
        return float(np.abs(out - ref[f"out_{length}"]).max())

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        assert max(pool.map(one, range(72))) < 1e-4


def test_tied_axes_must_agree(client):
    tokens = np.ones((1, 5), dtype=np.int64)
    mask = np.ones((1, 6), dtype=np.float32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(
            "tagger", [given("tokens", tokens, "INT64", False), given("mask", mask, "FP32", False)]
        )
    assert caught.value.status() == "400"
    assert "'tokens' axis 1 is 5, 'mask' axis 1 is 6" in caught.value.message()


def test_a_token_beyond_the_vocabulary_is_the_clients_error(client, server):
    tokens = np.array([[1, 2, 99]], dtype=np.int64)
    mask = np.ones((1, 3), dtype=np.float32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(
            "tagger", [given("tokens", tokens, "INT64", True), given("mask", mask, "FP32", True)]
        )
    assert caught.value.status() == "400"
    assert "tagger/1 cannot run on these inputs (tokens [1, 3], mask [1, 3])" in (
        caught.value.message()
    )
    assert client.is_model_ready("tagger")  # the version keeps serving
