"""docs/limits.md ("Limits and failure behaviour") against the code it describes."""

from __future__ import annotations

import re

from normserve.service import errors
from normserve.service.http import uvicorn_protocol
from normserve.service.settings import Settings
from tests.docs.pages import DOCS, nav_pages, section

PAGE = DOCS / "limits.md"


def test_the_page_follows_the_serving_pages_in_the_nav():
    nav = nav_pages()
    assert nav.index("serving.md") < nav.index("limits.md")
    assert nav.index("settings.md") < nav.index("limits.md")


def test_every_status_the_server_answers_is_listed():
    statuses = {
        cls.status
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ServeError) and cls.status != 500
    } | {405, 500, *uvicorn_protocol.STATUSES}
    table = section(PAGE, "## Status codes")
    listed = {int(s) for s in re.findall(r"^\| (\d{3}) \|", table, flags=re.MULTILINE)}
    assert listed == statuses


def test_settings_named_exist_and_quoted_defaults_are_the_code_s():
    text = PAGE.read_text()
    fields = set(Settings.model_fields)
    for name in re.findall(r"NORMSERVE_([A-Z_]+)", text):
        assert name.lower() in fields, name
    defaults = Settings()
    assert f"`NORMSERVE_MAX_BODY_BYTES` ({defaults.max_body_bytes >> 20} MiB)" in text
    assert f"`NORMSERVE_MAX_QUEUE_SIZE` ({defaults.max_queue_size})" in text
    assert f"`NORMSERVE_QUEUE_TIMEOUT_MS` ({defaults.queue_timeout_ms / 1000:g} s)" in text
    assert f"`NORMSERVE_DRAIN_TIMEOUT_S` ({defaults.drain_timeout_s:g} s)" in text
    assert f"`NORMSERVE_MAX_HEADER_BYTES` ({defaults.max_header_bytes >> 10} KiB" in text
    assert f"`NORMSERVE_MAX_HEADER_COUNT` ({defaults.max_header_count} fields)" in text
    assert f"`NORMSERVE_HEADER_TIMEOUT_S` ({defaults.header_timeout_s:g} s)" in text
    assert f"`NORMSERVE_BODY_TIMEOUT_S` ({defaults.body_timeout_s:g} s)" in text
    assert f"`NORMSERVE_MAX_PIPELINED_REQUESTS` ({defaults.max_pipelined_requests})" in text
    assert f"`NORMSERVE_MAX_UNSENT_BYTES` ({defaults.max_unsent_bytes >> 10} KiB)" in text
