"""The training loop behind ``normserve train``: seeded, CPU, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import Checkpoint, InputSpec, save_checkpoint
from models.datasets import Dataset, load_dataset
from models.registry import build_model, get_architecture

__all__ = ["TrainConfig", "TrainResult", "evaluate", "train", "train_to_file"]

ProgressCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "digits_cnn"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Checkpoint
    val_accuracy: float
    train_loss: float


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in eval mode; restores the model's previous mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)


def _fit(
    model: nn.Module, data: Dataset, config: TrainConfig, progress: ProgressCallback | None
) -> float:
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = -(-len(data.x_train) // config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    step, loss_value = 0, float("nan")
    for _ in range(config.epochs):
        order = torch.randperm(len(data.x_train), generator=generator)
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample per batch in train mode
                continue
            loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_value = loss.item()
            if progress is not None:
                progress(step, total, loss_value)
    model.eval()
    return loss_value


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Train ``config.arch`` on its dataset; return the checkpoint and validation accuracy."""
    architecture = get_architecture(config.arch)
    torch.manual_seed(config.seed)
    data = load_dataset(architecture.dataset, seed=config.seed, val_fraction=config.val_fraction)
    model = build_model(config.arch)
    train_loss = _fit(model, data, config, progress)
    accuracy = evaluate(model, data.x_val, data.y_val)
    checkpoint = Checkpoint(
        arch=config.arch,
        arch_config={},
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        input=InputSpec(name="input", shape=data.input_shape, dtype="float32"),
        labels=data.labels,
        preprocess={"description": data.description, "applied_in_model": True},
        metrics={
            "val_accuracy": accuracy,
            "train_loss": train_loss,
            "dataset": data.name,
            "seed": config.seed,
            "val_fraction": config.val_fraction,
            "epochs": config.epochs,
        },
    )
    return TrainResult(checkpoint=checkpoint, val_accuracy=accuracy, train_loss=train_loss)


def train_to_file(
    config: TrainConfig, out: Path, progress: ProgressCallback | None = None
) -> TrainResult:
    """Train, then write the checkpoint atomically to ``out``."""
    result = train(config, progress)
    save_checkpoint(result.checkpoint, out)
    return result
