"""Reading any checkpoint file safely, and the ways it can be read as a state dict.

``read_file`` loads with ``torch.load(..., weights_only=True)``: plain data, never code. A file
holds a state dict directly, or dicts of tensors under keys (``model_state_dict``,
``state_dict``, ``model``, ``ema``, ...): each is a possible *reading*, with the prefixes
wrappers put in front of every key (DataParallel/DDP's ``module.``, Lightning's ``model.``,
``torch.compile``'s ``_orig_mod.``) stripped or not. Which reading is the model is decided by
loading each strictly into the architecture (export/rebuild.py): exactly one must fit.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from normserve.errors import UserError, first_line

__all__ = [
    "KNOWN_PREFIXES",
    "CheckpointError",
    "StateDictReading",
    "is_state_dict",
    "read_file",
    "state_dict_readings",
]

# Prefixes wrappers put in front of every key: DataParallel/DDP, Lightning's self.model,
# torch.compile. Stripped (also in combination) when every key of a dict carries them.
KNOWN_PREFIXES = ("module.", "model.", "_orig_mod.")


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, unsafe or not in the expected format."""


def _unsafe_reason(exc: Exception) -> str:
    """torch's weights-only refusal, reduced to the offending global."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if match:
        return f"it references {match.group(1)}, which is code, not data"
    return first_line(exc, default="unsafe content")


def read_file(path: Path) -> object:
    """The file's content, loaded as plain data (``weights_only=True``) onto the CPU."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        # torch.save has written zip archives since 1.6; anything else is corrupt or legacy.
        raise CheckpointError(f"checkpoint {path} is not a readable torch file (not a zip archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} is refused: loading it needs code to be unpickled "
            f"(normserve loads with weights_only=True): {_unsafe_reason(exc)}; save "
            "model.state_dict() or a normserve checkpoint instead of a pickled object"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a readable torch file: {first_line(exc)}"
        ) from exc


@dataclass(frozen=True)
class StateDictReading:
    """One way to read a file as a state dict: which entry, which prefix stripped."""

    key: str | None  # the entry of the file's dict; None when the file is the state dict
    prefix: str  # stripped from every key ("" for none)
    state_dict: dict[str, torch.Tensor]
    source_keys: int  # keys in the entry (more than len(state_dict) when a prefix selected part)

    def describe(self) -> str:
        where = "the file's state dict" if self.key is None else repr(self.key)
        if not self.prefix:
            return where
        part = "" if self.source_keys == len(self.state_dict) else " (the keys under it)"
        return f"{where} without prefix {self.prefix!r}{part}"

    def to_dict(self) -> dict[str, Any]:
        """What ``model.json`` records of the choice."""
        return {
            "state_dict_key": self.key,
            "strip_prefix": self.prefix,
            "tensors": len(self.state_dict),
            "ignored_keys": self.source_keys - len(self.state_dict),
        }


def is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _prefix_chains(keys: list[str]) -> list[str]:
    """ "" plus every chain of known prefixes that every key starts with ("module._orig_mod.")."""
    chains, current = [""], ""
    while True:
        rest = [k[len(current) :] for k in keys]
        step = next((p for p in KNOWN_PREFIXES if all(r.startswith(p) for r in rest)), None)
        if step is None or any(len(r) == len(step) for r in rest):
            return chains
        current += step
        chains.append(current)


def state_dict_readings(
    raw: object, *, key: str | None = None, prefix: str | None = None, where: str = "checkpoint"
) -> list[StateDictReading]:
    """Every way to read ``raw`` (a loaded file) as a state dict.

    Sources: the file itself when it is a dict of tensors, else every entry that is one (or
    only ``key``). Prefixes: none, and the known ones every key carries (or only ``prefix``,
    which then selects the keys under it).
    """
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} holds a {type(raw).__name__}, not a dict of tensors")
    if key is not None:
        if key not in raw:
            found = ", ".join(repr(k) for k in raw) or "none"
            raise CheckpointError(f"--state-dict-key {key!r} is not in {where} (keys: {found})")
        if not is_state_dict(raw[key]):
            raise CheckpointError(f"{where}[{key!r}] is not a dict of parameter names to tensors")
        sources: list[tuple[str | None, dict]] = [(key, raw[key])]
    elif is_state_dict(raw):
        sources = [(None, raw)]
    else:
        sources = [(str(k), v) for k, v in raw.items() if is_state_dict(v)]
    readings = []
    for name, state in sources:
        if prefix is not None:
            part = _strip(state, prefix)
            if not part:
                raise CheckpointError(
                    f"--strip-prefix {prefix!r}: no key of {where}"
                    f"{'' if name is None else f'[{name!r}]'} starts with it"
                )
            readings.append(StateDictReading(name, prefix, part, len(state)))
            continue
        for chain in _prefix_chains(list(state)):
            readings.append(StateDictReading(name, chain, _strip(state, chain), len(state)))
    return readings
