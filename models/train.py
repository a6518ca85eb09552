"""The training loop behind ``normserve train``: seeded, CPU, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from normserve.models.checkpoint import Checkpoint, InputSpec, save_checkpoint
from normserve.models.datasets import Dataset, load_dataset
from normserve.models.registry import Architecture, build_model, get_architecture

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "evaluate_reconstruction",
    "train",
    "train_to_file",
]

# (steps done, steps planned, last loss): called with 0 and NaN before the first step.
ProgressCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """``epochs=None`` takes the architecture's default; ``max_steps`` cuts training short."""

    arch: str = "digits_cnn"
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2


@dataclass(frozen=True)
class TrainResult:
    """``val_accuracy`` for classifiers; ``val_relative_mse`` (MSE / input variance) otherwise."""

    checkpoint: Checkpoint
    task: str
    train_loss: float
    val_accuracy: float | None = None
    val_relative_mse: float | None = None

    def summary(self) -> str:
        if self.val_accuracy is not None:
            return f"validation accuracy {self.val_accuracy:.2%}"
        return f"validation relative MSE {self.val_relative_mse:.4f} (MSE / input variance)"


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


@torch.no_grad()
def evaluate_reconstruction(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> float:
    """Mean squared reconstruction error divided by the variance of ``x`` (eval mode)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        total += float(((model(batch) - batch) ** 2).sum())
    model.train(was_training)
    return total / x.numel() / float(x.var())


def _loss_fn(task: str, data: Dataset) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        cross_entropy = nn.CrossEntropyLoss()
        return lambda out, idx: cross_entropy(out, data.y_train[idx])
    scale = 1.0 / float(data.x_train.var())  # relative MSE: 1.0 is "predict the mean"
    return lambda out, idx: nn.functional.mse_loss(out, data.x_train[idx]) * scale


def _fit(
    model: nn.Module,
    data: Dataset,
    architecture: Architecture,
    config: TrainConfig,
    progress: ProgressCallback | None,
) -> tuple[float, int, float]:
    """Train in place; return the last loss, the steps taken and the epochs they make up."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    epochs = config.epochs or architecture.epochs
    # A last batch of one sample is skipped (BatchNorm needs two), so it is no step.
    full, rest = divmod(len(data.x_train), config.batch_size)
    steps_per_epoch = full + (rest >= 2)
    total = steps_per_epoch * epochs
    if config.max_steps is not None:
        total = max(1, min(total, config.max_steps))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    loss_fn = _loss_fn(architecture.task, data)
    model.train()
    step, loss_value = 0, float("nan")
    if progress is not None:
        progress(0, total, loss_value)  # the plan, before the first (slowest) step
    while step < total:
        order = torch.randperm(len(data.x_train), generator=generator)
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample per batch in train mode
                continue
            loss = loss_fn(model(data.x_train[idx]), idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_value = loss.item()
            if progress is not None:
                progress(step, total, loss_value)
            if step >= total:
                break
    model.eval()
    return loss_value, step, step / steps_per_epoch


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Train ``config.arch`` on its dataset; return the checkpoint and its validation metric."""
    architecture = get_architecture(config.arch)
    torch.manual_seed(config.seed)
    data = load_dataset(architecture.dataset, seed=config.seed, val_fraction=config.val_fraction)
    model = build_model(config.arch)
    train_loss, steps, epochs_run = _fit(model, data, architecture, config, progress)
    metrics: dict[str, object] = {
        "task": architecture.task,
        "train_loss": train_loss,
        "dataset": data.name,
        "seed": config.seed,
        "val_fraction": config.val_fraction,
        # What ran, not what was planned: --max-steps may stop inside the first epoch.
        "epochs": round(epochs_run, 3),
        "steps": steps,
        "max_steps": config.max_steps,
    }
    if architecture.task == "classification":
        accuracy: float | None = evaluate(model, data.x_val, data.y_val)
        relative_mse = None
        metrics["val_accuracy"] = accuracy
        labels: list[str] | None = data.labels
    else:
        accuracy = None
        relative_mse = evaluate_reconstruction(model, data.x_val)
        metrics["val_relative_mse"] = relative_mse
        labels = None
    checkpoint = Checkpoint.from_state_dict(
        arch=config.arch,
        arch_config={},
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        inputs=[InputSpec(name="input", shape=list(data.input_shape), dtype="float32")],
        labels=labels,
        preprocess={"description": data.description, "applied_in_model": True},
        metrics=metrics,
        output_names=["logits" if architecture.task == "classification" else "reconstruction"],
    )
    return TrainResult(
        checkpoint=checkpoint,
        task=architecture.task,
        train_loss=train_loss,
        val_accuracy=accuracy,
        val_relative_mse=relative_mse,
    )


def train_to_file(
    config: TrainConfig, out: Path, progress: ProgressCallback | None = None
) -> TrainResult:
    """Train, then write the checkpoint atomically to ``out``."""
    result = train(config, progress)
    save_checkpoint(result.checkpoint, out)
    return result
