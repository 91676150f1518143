"""pytest-vpcd: a virtual smart card slot per test (vpcd-rs).

Fixtures (see :mod:`pytest_vpcd.plugin`): ``vpcd_environment`` (the private pcscd of
this pytest process or xdist worker), ``vpcd_slot`` (a slot leased for the test),
``vpcd_card`` (a slot with the built-in card in it), ``vpcd_lease`` (more slots).
"""

from .environment import CARD_WAIT, Environment, Slot, VpcdError

__all__ = ["CARD_WAIT", "Environment", "Slot", "VpcdError"]
