"""The one table from serving errors to gRPC status codes."""

from __future__ import annotations

import inspect
import logging

import grpc
import pytest

from normserve.service import errors
from normserve.service.grpc.status import status_of

# The mapping, by the HTTP status each error carries (an independent statement of it).
BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

FAMILY = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ServeError)
]


def make(cls: type[errors.ServeError]) -> errors.ServeError:
    return cls(f"{cls.__name__} happened")


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_every_error_maps_by_its_http_status_with_its_own_message(cls):
    code, message, _ = status_of(make(cls))
    assert code == BY_HTTP_STATUS[cls.status]
    assert message == f"{cls.__name__} happened"


def test_the_family_is_all_there():
    names = {cls.__name__ for cls in FAMILY}
    assert {"BadRequest", "QueueFull", "QueueTimeout", "Unauthorized", "NotFound"} <= names


def test_retry_information_travels_as_trailing_metadata():
    _, _, trailing = status_of(errors.QueueFull("queue is full", retry_after_s=7))
    assert ("retry-after", "7") in trailing
    _, _, trailing = status_of(errors.Unauthorized("wrong key"))
    assert ("www-authenticate", "Bearer") in trailing


def test_a_bug_is_internal_logged_and_says_nothing_of_itself(caplog):
    with caplog.at_level(logging.ERROR, logger="normserve.service"):
        code, message, trailing = status_of(KeyError("secret detail"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in message
    assert "bug" in message
    assert trailing == ()
    assert "secret detail" in caplog.text
