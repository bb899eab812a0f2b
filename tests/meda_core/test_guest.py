"""The test guest's console parsing."""

from __future__ import annotations

from meda_core.testing.guest import guest_ip, guest_output


def test_kernel_lines_in_the_middle_of_a_marker_are_taken_out() -> None:
    console = "MEDA-GUEST-BOOTED\nMEDA-GUEST-IP=19[   12.345678] rcu: INFO: stall\n2.168.100.6\n"
    assert guest_ip(console) == "192.168.100.6"
    assert "rcu" not in guest_output(console)
    assert guest_ip("MEDA-GUEST-IP=19") is None
