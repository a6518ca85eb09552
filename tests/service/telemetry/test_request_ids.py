"""Request ids: echo a safe caller id, else a new one, unique here and in forked processes."""

from __future__ import annotations

import os

import pytest

from normserve.service.telemetry.request_ids import request_id


@pytest.mark.parametrize("given", ["req-1", "a" * 128, "trace:0af7.651916cd_43dd"])
def test_a_safe_caller_id_is_kept(given: str):
    assert request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "a" * 129, "has space", 'quo"te', "new\nline", "é"])
def test_an_unsafe_or_missing_id_is_replaced_by_a_new_one(given: str | None):
    new = request_id(given)
    assert new != given
    assert request_id(new) == new  # a new id is itself a safe id


def test_new_ids_are_unique_here_and_in_a_forked_child():
    ours = {request_id(None) for _ in range(10_000)}
    assert len(ours) == 10_000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first ids and leave at once
        os.close(read)
        os.write(write, " ".join(request_id(None) for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    assert len(child) == 3
    assert not child & ours
    assert {i.rsplit("-", 1)[0] for i in child}.isdisjoint({i.rsplit("-", 1)[0] for i in ours})
