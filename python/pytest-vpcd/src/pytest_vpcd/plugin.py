"""The pytest side: options and fixtures.

One environment per pytest process: with pytest-xdist each worker is a process and
starts its own, so workers never share a pcscd nor a port. It starts at the first
test that asks for a vpcd fixture (a session that uses none starts nothing) and
ends with the session.
"""

from __future__ import annotations

import os

import pytest

from .environment import Environment, Slot


def pytest_addoption(parser):
    group = parser.getgroup("vpcd", "virtual smart card slots (vpcd-rs)")
    group.addoption(
        "--vpcd-run",
        default=None,
        help="the vpcd-run program (default: $VPCD_RUN, else from PATH)",
    )
    group.addoption(
        "--vpcd-slots",
        type=int,
        default=None,
        help="slots of each environment, 1 to 16 (default: $VPCD_TEST_SLOTS, else 16)",
    )
    group.addoption(
        "--vpcd-debug",
        action="store_true",
        default=False,
        help="pcscd's and the driver's debug log on stderr",
    )


@pytest.fixture(scope="session")
def vpcd_environment(request):
    """The private pcscd of this process (worker), with pyscard pointed at it."""
    config = request.config
    slots = config.getoption("--vpcd-slots") or int(os.environ.get("VPCD_TEST_SLOTS", "16"))
    env = Environment(
        vpcd_run=config.getoption("--vpcd-run"),
        slots=slots,
        debug=config.getoption("--vpcd-debug"),
    )
    yield env
    env.close()


@pytest.fixture
def vpcd_lease(vpcd_environment):
    """Leases slots: ``slot = vpcd_lease()``; all are given back after the test."""
    leased = []

    def lease() -> Slot:
        slot = vpcd_environment.lease()
        leased.append(slot)
        return slot

    yield lease
    errors = []
    for slot in leased:
        try:
            slot.release()
        except Exception as e:  # report every slot's trouble, free the others
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def vpcd_slot(vpcd_lease) -> Slot:
    """An empty slot of the test's own: ``.host``/``.port`` for its vicc,
    ``.reader`` for PC/SC, ``.connect()`` / ``.transmit()`` through pyscard."""
    return vpcd_lease()


@pytest.fixture
def vpcd_card(vpcd_slot) -> Slot:
    """A slot with the built-in card (vpcd-vicc) in it, ready for APDUs."""
    vpcd_slot.insert_builtin()
    return vpcd_slot
