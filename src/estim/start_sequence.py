"""The start sequence of a session's policy: CONFIGURE_CHANNEL for each channel
(asked again, as a new request, up to ``CONFIGURE_REQUESTS`` times: nothing can be
on while configuring), then START once all are accepted, the host's dwell timer
started just before it (so it can only end early), then the live loop.
"""

from __future__ import annotations

from estim.info import MODES, WAVEFORMS
from estim.pending import ConfigureAsked, StartAsked, StatusAsked
from estim.plan import ChannelPlan
from estim.policy_base import PolicyBase
from estim.protocol import ConfigureChannel, GetStatus, Message, Nack, Start
from estim.refusals import device_error
from estim.session_state import ChannelsConfigured, Host, StartAccepted


class StartSequence(PolicyBase):
    def begin(self, now: float, token: object) -> None:
        """Configure every channel; START follows when all are accepted."""
        self.start_token = token
        self._activate(now)
        for channel in self.plan.channels:
            seq = self._send(_configure(channel), now, ConfigureAsked(channel.channel, 1))
            self._configuring.add(seq)

    def _answer_configure(
        self, tag: ConfigureAsked, request: Message, response: Message, now: float
    ) -> None:
        self._configuring.discard(request.seq)
        if isinstance(response, Nack):
            self._refused(device_error(response, f"channel {tag.channel} settings"), now)
            return
        if not self._configuring and self.states.host is Host.CONFIGURING:
            self.states.fire(ChannelsConfigured())
            self.host_deadline = now + self.plan.dwell  # before START: it can only end early
            self._start_sent_at = now
            start = Start(
                session_id=self.session_id,
                dwell_ms=round(self.plan.dwell * 1000),
                ramp_ms=round(self.plan.ramp * 1000),
                watchdog_ms=round(self.plan.watchdog * 1000),
                channel_mask=sum(1 << (c.channel - 1) for c in self.plan.channels),
            )
            self._send(start, now, StartAsked())

    def _answer_start(
        self, tag: StartAsked, request: Message, response: Message, now: float
    ) -> None:
        if isinstance(response, Nack):
            self._refused(device_error(response, "start"), now)
            return
        self.states.fire(StartAccepted())  # (host: LIVE, or still STOPPING or RECOVERING)
        self.started_at = now
        self._record(
            "start_accepted", {"dwell_s": self.plan.dwell, "ramp_s": self.plan.ramp}, now=now
        )
        self._resolve(self.start_token, None)
        if self.states.host is Host.LIVE:
            self._silence_ref = now
            self._send_heartbeat(now)
            self._next_status = now + self.status_every
            self._send(GetStatus(), now, StatusAsked(), retries=0)


def _configure(plan: ChannelPlan) -> ConfigureChannel:
    """The channel's numbers in the wire's units. Each is already a whole number of
    them (the plan model and ``Limits`` refuse any other): round() only undoes the
    float's last bit, so the unit runs exactly what was judged and is recorded."""
    return ConfigureChannel(
        channel=plan.channel,
        waveform=WAVEFORMS[plan.waveform],
        mode=MODES[plan.mode],
        frequency_dhz=round(plan.frequency_hz * 10),
        pulse_width_us=plan.pulse_width_us,
        amplitude_ua=round(plan.amplitude_ma * 1000),
        alt_frequency_dhz=round((plan.alt_frequency_hz or 0) * 10),
        switch_ms=round((plan.switch_s or 0) * 1000),
    )
