"""gateway/upstream/names.py: what the response filter reads of a field name."""

from __future__ import annotations

from gateway.upstream import names
from gateway.upstream.names import response_name


def test_a_name_is_lowered_keyed_and_decoded() -> None:
    assert response_name(b"X_Upstream-Token") == (
        b"x_upstream-token",
        b"x-upstream-token",
        "X_Upstream-Token",
    )


def test_obs_text_octets_decode_one_to_one() -> None:
    assert response_name(b"X-\xe9t\xe9")[2] == "X-\xe9t\xe9"


def test_the_cache_is_bounded_and_past_it_names_are_still_answered() -> None:
    for n in range(names._NAMES_BOUND + 10):
        response_name(b"X-Name-%d" % n)
    assert len(names._NAMES) == names._NAMES_BOUND
    assert response_name(b"X-Past-The-Bound") == (
        b"x-past-the-bound",
        b"x-past-the-bound",
        "X-Past-The-Bound",
    )
