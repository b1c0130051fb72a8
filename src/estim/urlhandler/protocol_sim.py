"""``sim://``: a simulated estim unit as a pyserial port (see ``estim.sim.protocol_sim``)."""

from estim.sim.protocol_sim import Serial

__all__ = ["Serial"]
