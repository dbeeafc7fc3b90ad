"""The mta's memory of messages a failed direct attempt may have delivered, unqueued."""

from __future__ import annotations

from mailstack.mta.unsettled import Unsettled, digest


def test_a_retry_of_the_same_message_gets_its_queue_id_once() -> None:
    u = Unsettled()
    assert not u
    key = digest("a@example.org", ["b@example.test"], b"Subject: x\r\n\r\nbody\r\n")
    u.remember(key, "QID1")
    assert u
    # another envelope or other octets are another message
    assert u.take(digest("a@example.org", ["c@example.test"],
                         b"Subject: x\r\n\r\nbody\r\n")) is None
    assert u.take(digest("a@example.org", ["b@example.test"],
                         b"Subject: x\r\n\r\nbody.\r\n")) is None
    assert u.take(digest("A@example.org", ["B@example.test"],
                         b"Subject: x\r\n\r\nbody\r\n")) == "QID1"
    assert u.take(key) is None and not u


def test_memory_is_bounded_in_size_and_age() -> None:
    u = Unsettled(most=3)
    keys = [digest("a@x.test", [f"r{i}@x.test"], b"m") for i in range(5)]
    for i, k in enumerate(keys):
        u.remember(k, f"Q{i}")
    assert [u.take(k) for k in keys] == [None, None, "Q2", "Q3", "Q4"]
    old = Unsettled(keep=-1.0)  # every entry is too old
    old.remember(keys[0], "Q0")
    assert old.take(keys[0]) is None
