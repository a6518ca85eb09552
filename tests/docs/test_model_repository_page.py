"""docs/model-repository.md describes every key export writes into model.json, and no other."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.docs.pages import DOCS, section

PAGE = DOCS / "model-repository.md"


def documented_keys() -> set[str]:
    table = section(PAGE, "## model.json")
    keys = set()
    for row in re.findall(r"^\| (.*?) \|", table, flags=re.MULTILINE):
        keys.update(re.findall(r"`([a-z_0-9]+)`", row))
    return keys


def test_every_model_json_key_is_described(digits_repository: Path):
    written = json.loads((digits_repository / "digits" / "1" / "model.json").read_text())
    optional = {"dynamic_batching"}  # written by hand, per model
    assert documented_keys() == set(written) | optional
