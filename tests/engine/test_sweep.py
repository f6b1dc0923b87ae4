"""roost.engine.sweep.Deadlines: one fixed timeout, swept from the front."""

from __future__ import annotations

from roost.engine.sweep import Deadlines
from roost.engine.table import Conn


def conns(*fds: int) -> list[Conn]:
    return [Conn(fd) for fd in fds]


def test_empty():
    d = Deadlines(10.0)
    assert len(d) == 0
    assert d.expired(1e12) == []
    assert d.timeout == 10.0


def test_nothing_expires_before_its_deadline():
    d = Deadlines(10.0)
    a, b = conns(3, 4)
    d.add(a, 100.0)
    d.add(b, 101.0)
    assert d.expired(109.999) == []
    assert len(d) == 2


def test_a_deadline_expires_at_its_exact_time():
    d = Deadlines(10.0)
    [a] = conns(3)
    d.add(a, 100.0)
    assert d.expired(110.0) == [a]
    assert len(d) == 0


def test_expired_removes_and_returns_in_deadline_order():
    d = Deadlines(5)
    a, b, c, e = conns(7, 3, 9, 4)
    for t, conn in enumerate((a, b, c, e)):
        d.add(conn, float(t))
    assert d.expired(6.0) == [a, b]
    assert len(d) == 2
    assert d.expired(6.0) == []  # already removed
    assert d.expired(100.0) == [c, e]
    assert len(d) == 0


def test_same_time_adds_all_expire_together():
    d = Deadlines(1.0)
    group = conns(*range(10, 20))
    for conn in group:
        d.add(conn, 0.0)
    assert d.expired(1.0) == group


def test_zero_timeout_expires_on_the_next_sweep():
    d = Deadlines(0.0)
    [a] = conns(3)
    d.add(a, 5.0)
    assert d.expired(5.0) == [a]


def test_discard():
    d = Deadlines(10.0)
    a, b, c = conns(3, 4, 5)
    for conn in (a, b, c):
        d.add(conn, 0.0)
    d.discard(b)
    assert len(d) == 2
    assert d.expired(10.0) == [a, c]


def test_discard_of_an_absent_conn_is_a_no_op():
    d = Deadlines(10.0)
    a, b = conns(3, 4)
    d.discard(a)
    d.add(b, 0.0)
    d.discard(a)
    d.discard(a)
    assert len(d) == 1
    assert d.expired(10.0) == [b]
    d.discard(b)  # after it expired
    assert len(d) == 0


def test_discard_of_a_closed_conn_spares_the_new_one_on_the_same_fd():
    """fd numbers are reused: a late discard of the old Conn must not remove
    the new connection that now has its fd."""
    d = Deadlines(10.0)
    old = Conn(5)
    new = Conn(5)
    d.add(new, 0.0)
    d.discard(old)
    assert len(d) == 1
    assert d.expired(10.0) == [new]


def test_a_discarded_conn_does_not_block_the_sweep():
    d = Deadlines(10.0)
    a, b = conns(3, 4)
    d.add(a, 0.0)
    d.add(b, 1.0)
    d.discard(a)
    assert d.expired(11.0) == [b]


def test_re_adding_a_conn_gives_it_the_new_deadline():
    d = Deadlines(10.0)
    [a] = conns(3)
    d.add(a, 0.0)
    d.add(a, 5.0)
    assert len(d) == 1
    assert d.expired(10.0) == []
    assert d.expired(15.0) == [a]


def test_re_adding_a_conn_does_not_hold_back_the_ones_behind_it():
    """Insertion order is deadline order only if a re-added entry moves to the
    back: otherwise its later deadline sits at the front and stops the sweep
    before connections whose time is up."""
    d = Deadlines(10.0)
    a, b = conns(3, 4)
    d.add(a, 0.0)
    d.add(b, 1.0)
    d.add(a, 2.0)  # a's deadline is now 12
    assert d.expired(11.0) == [b]
    assert d.expired(12.0) == [a]


def test_a_new_conn_on_a_reused_fd_takes_its_place_at_the_back():
    """The old Conn on fd 5 was never discarded (a missed path); the new one
    on the same fd replaces it, with its own deadline and place."""
    d = Deadlines(10.0)
    old, other, new = Conn(5), Conn(6), Conn(5)
    d.add(old, 0.0)
    d.add(other, 1.0)
    d.add(new, 2.0)
    assert len(d) == 2
    assert d.expired(11.0) == [other]
    assert d.expired(12.0) == [new]


def test_a_sweep_visits_only_what_expired():
    """Only the front is looked at: an unexpired entry ends the sweep, and
    the ones behind it (with later deadlines) stay."""
    d = Deadlines(10.0)
    many = conns(*range(100, 1100))
    for i, conn in enumerate(many):
        d.add(conn, float(i))
    assert d.expired(10.0 + 2) == many[:3]
    assert len(d) == 997
    assert d.expired(10.0 + 999) == many[3:]


def test_deadlines_hold_no_per_instance_dict():
    d = Deadlines(1.0)
    assert not hasattr(d, "__dict__")
