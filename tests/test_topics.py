"""Tests for osml.wire.topics: the topic layout and the one set of name rules."""

from __future__ import annotations

import pytest

from osml.wire import topics


@pytest.mark.parametrize("kind", ["context", "agent id"])
@pytest.mark.parametrize("value", ["a", "greenhouse-1", "M0", "x" * 128, "üñí.code"])
def test_topic_levels_accept_plain_names(kind: topics.NameKind, value: str) -> None:
    assert topics.check_name(kind, value) == value


@pytest.mark.parametrize("kind", ["context", "agent id"])
@pytest.mark.parametrize("value", ["", "a/b", "a+", "#", "a\0b", "x" * 129, 7, None])
def test_topic_levels_refuse_what_breaks_a_topic(kind: topics.NameKind, value: object) -> None:
    with pytest.raises(ValueError, match=f"invalid {kind}"):
        topics.check_name(kind, value)


def test_user_and_fleet_names_are_stricter() -> None:
    assert topics.check_name("user name", "lab.0") == "lab.0"
    assert topics.check_name("fleet name", "lab_1-a") == "lab_1-a"
    for kind in ("user name", "fleet name"):
        for bad in ("a b", "a:b", ".a", "-a", "", "ü"):
            with pytest.raises(ValueError, match=f"invalid {kind}"):
                topics.check_name(kind, bad)
    topics.check_name("user name", "a" * 129)
    with pytest.raises(ValueError):
        topics.check_name("fleet name", "a" * 65)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        topics.check_name("colour", "red")  # type: ignore[arg-type]


def test_topics_and_filters() -> None:
    assert topics.inbox("lab", "b", "a") == "osml/lab/b/in/a"
    assert topics.inbox_filter("lab", "b") == "osml/lab/b/in/+"
    assert topics.inbox_tree("lab", "b") == "osml/lab/b/in/#"
    assert topics.status("lab", "a") == "osml/lab/a/status"
    assert topics.metrics("lab", "a") == "osml/lab/a/metrics"
    assert topics.status_filter("lab") == "osml/lab/+/status"
    assert topics.metrics_filter("lab") == "osml/lab/+/metrics"
    assert topics.status_filter() == "osml/+/+/status"
    assert topics.metrics_filter() == "osml/+/+/metrics"
    with pytest.raises(ValueError):
        topics.metrics_filter("a/b")


def test_parsers_invert_the_builders() -> None:
    assert topics.parse_inbox(topics.inbox("lab", "b", "a")) == ("lab", "b", "a")
    assert topics.parse_agent_topic(topics.status("lab", "a")) == ("lab", "a", "status")
    assert topics.parse_inbox("osml/lab/b/status") is None
    assert topics.parse_agent_topic("other/lab/a/status") is None
