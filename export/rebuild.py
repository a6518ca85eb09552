"""Rebuilding the eager model from a checkpoint: the architecture, and the one reading of the
file that loads into it strictly.

Shared by ``normserve export`` (export/from_checkpoint.py) and ``normserve verify``
(export/verify.py): both must rebuild the same model the same way. A file may offer several
readings (models/checkpoint.py: every dict of tensors in it, with or without the usual key
prefixes); each is loaded, strictly, into a fresh copy of the architecture, and exactly one
must fit. None fitting, or several, is one line naming them and the flags that pick one.
Nothing is ever loaded non-strictly.
"""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import torch
from torch import nn

from normserve.errors import first_line
from normserve.export.errors import ExportError
from normserve.models.checkpoint import CHECKPOINT_FORMAT, Checkpoint, StateDictReading
from normserve.models.registry import build_model

__all__ = ["build_eval_model", "float_dtype", "rebuild", "sha256_file"]

PICK = "pick one with --state-dict-key KEY and/or --strip-prefix PREFIX"


def sha256_file(path: Path) -> str:
    """The file's SHA-256 (how model.json names its source checkpoint)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _misfit(exc: RuntimeError) -> str:
    """torch's strict-load error in a few words: the first lines, or the key counts."""
    text = str(exc)
    counts = []
    for kind in ("Missing key(s)", "Unexpected key(s)"):
        match = re.search(rf"{re.escape(kind)} in state_dict: (.*?)\.(?:\s|$)", text, re.S)
        if match:
            keys = re.findall(r'"([^"]+)"', match.group(1))
            counts.append(f"{len(keys)} {kind.split()[0].lower()} (e.g. {keys[0]!r})")
    if "size mismatch" in text:
        counts.append(f"{text.count('size mismatch')} size mismatch(es)")
    if counts:
        return ", ".join(counts)
    lines = text.strip().splitlines() or [first_line(exc)]
    return " ".join(line.strip() for line in lines[:3])


def float_dtype(tensors: object) -> torch.dtype | None:
    """The one floating dtype of ``tensors`` (an iterable), None when there are none or several."""
    kinds = {t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else None


def _in_dtype_of(model: nn.Module, reading: StateDictReading) -> nn.Module:
    """``model`` cast to the reading's floating dtype when every float tensor of the reading
    has one dtype the model's do not (a ``model.half().state_dict()`` rebuilds as float16):
    ``load_state_dict`` would otherwise copy the values into the factory's float32 silently."""
    want = float_dtype(reading.state_dict.values())
    have = float_dtype([*model.parameters(), *model.buffers()])
    return model.to(want) if want is not None and have is not None and want != have else model


def _loads(model: nn.Module, reading: StateDictReading) -> str | None:
    """None when ``reading`` loads strictly into ``model``, else why not."""
    try:
        _in_dtype_of(model, reading).load_state_dict(reading.state_dict, strict=True)
    except RuntimeError as exc:
        return _misfit(exc)
    return None


def rebuild(checkpoint: Checkpoint) -> tuple[nn.Module, StateDictReading]:
    """The eval-mode model with the one reading that loads strictly, and that reading."""
    fresh = build_model(checkpoint.arch, checkpoint.arch_config)
    if len(checkpoint.readings) == 1:
        (reading,) = checkpoint.readings
        why = _loads(fresh, reading)
        if why is not None:
            hint = "" if checkpoint.source == CHECKPOINT_FORMAT else f"; {PICK}, or check --arch"
            raise ExportError(f"state_dict does not fit arch {checkpoint.arch!r}: {why}{hint}")
        return _in_dtype_of(fresh, reading).eval(), reading
    fits, misfits = [], []
    for reading in checkpoint.readings:
        why = _loads(copy.deepcopy(fresh), reading)
        if why is None:
            fits.append(reading)
        else:
            misfits.append(f"{reading.describe()}: {why}")
    if len(fits) == 1:
        model = _in_dtype_of(copy.deepcopy(fresh), fits[0])
        model.load_state_dict(fits[0].state_dict, strict=True)
        return model.eval(), fits[0]
    if not fits:
        tried = "; ".join(misfits) or "no dict of tensors in the file"
        raise ExportError(
            f"no reading of the checkpoint loads strictly into arch {checkpoint.arch!r} "
            f"({tried}); {PICK}, or check --arch and --arch-config"
        )
    names = ", ".join(r.describe() for r in fits)
    raise ExportError(
        f"{len(fits)} readings of the checkpoint load strictly into arch {checkpoint.arch!r} "
        f"({names}): normserve will not guess; {PICK}"
    )


def build_eval_model(checkpoint: Checkpoint) -> nn.Module:
    """Rebuild the architecture, load the state dict strictly, return it in eval mode."""
    return rebuild(checkpoint)[0]
