"""README's "Limits and failure behaviour" section against the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from normserve.service import errors
from normserve.service.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "## Limits and failure behaviour"


def section() -> str:
    text = README.read_text()
    assert HEADING in text
    body = text.split(HEADING, 1)[1]
    return body[: re.search(r"^## ", body, flags=re.MULTILINE).start()]


def test_the_section_follows_the_serving_section():
    headings = re.findall(r"^## .*$", README.read_text(), flags=re.MULTILINE)
    assert headings[headings.index("## Serving: HTTP API and configuration") + 1] == HEADING


def test_every_status_the_server_answers_is_listed():
    statuses = {
        cls.status
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ServeError) and cls.status != 500
    } | {405, 500}
    listed = {int(s) for s in re.findall(r"^\| (\d{3}) \|", section(), flags=re.MULTILINE)}
    assert listed == statuses


def test_settings_named_exist_and_quoted_defaults_are_the_code_s():
    text = section()
    fields = set(Settings.model_fields)
    for name in re.findall(r"NORMSERVE_([A-Z_]+)", text):
        assert name.lower() in fields, name
    defaults = Settings()
    assert f"`NORMSERVE_MAX_BODY_BYTES` ({defaults.max_body_bytes >> 20} MiB)" in text
    assert f"`NORMSERVE_MAX_QUEUE_SIZE` ({defaults.max_queue_size})" in text
    assert f"`NORMSERVE_QUEUE_TIMEOUT_MS` ({defaults.queue_timeout_ms / 1000:g} s)" in text
    assert f"`NORMSERVE_DRAIN_TIMEOUT_S` ({defaults.drain_timeout_s:g} s)" in text
