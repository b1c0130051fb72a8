"""``estim conformance``: check a unit against firmware_protocol/PROTOCOL.md.

The golden vectors (``vectors``, ``sequences``), the replies the spec prescribes
for a unit's own limits (``replies``), and the suite that sends them to a unit
over any pyserial URL in raw frames (``suite``).
"""
