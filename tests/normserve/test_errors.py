"""The one-line error helpers."""

from __future__ import annotations

import pytest

from normserve.errors import first_line


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("first\nsecond\nthird"), "first"),
        (ValueError("  \n padded first \nsecond"), "padded first"),
        (KeyError(), "KeyError"),
        (OSError(""), "OSError"),
    ],
)
def test_first_line_keeps_the_first_line_or_names_the_type(exc: BaseException, expected: str):
    assert first_line(exc) == expected


def test_first_line_of_an_empty_message_can_have_a_default():
    assert first_line(RuntimeError("   "), default="unsafe content") == "unsafe content"
    assert first_line(RuntimeError("said"), default="unsafe content") == "said"
