"""Mutants of the C reference unit: each one small patch (text found once in a source
of firmware_protocol/reference/, replaced) that breaks one rule of PROTOCOL.md.

``catches`` is the rule (a row of ``estim conformance``) that must FAIL on the
mutant, and ``clauses`` the clauses run against it (the handshake and the
judgements of the whole run always run). A mutant with ``catches=None`` breaks
a rule no wire test can see: the unit says the right thing while its output
does otherwise, or the rule needs a button or a fault only the hardware can
cause. ``unseen`` says why, and ``measured`` how a measured test load (the
unit's ``--json`` log of what it drove: its ``level`` lines) shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

from estim.conformance import boundaries, ended, framing, ramps, requests, rig, stopping, watchdog
from estim.conformance.clause import Rig

#: the unit options every mutant runs with: a 2 s smallest dwell, so the whole
#: session takes 2 s, not 60
FAST = ("dwell_min_s=2",)
#: a unit whose rates let two phases overlap (20 kHz dHz x 250 us = 10 s): the
#: reference unit's 150 Hz x 500 us cannot
OVERLAPPING = ("frequency_max_hz=2000",)
#: the lead-off rig: channel 2 open throughout, channel 1 opening 3 s into a session
OPEN = ("open_channel=2",)
OPEN_RIG = Rig(open_channel=2)
LEAD_OFF = ("lead_off_at=3:1",)
LEAD_OFF_RIG = Rig(lead_off=(3.0, 1))


@dataclass(frozen=True)
class Mutant:
    name: str
    #: the rule it breaks, with its section
    rule: str
    find: str
    replace: str
    #: the row that must FAIL (a rule of estim conformance), or None: not on the wire
    catches: str | None
    clauses: tuple[str, ...]
    options: tuple[str, ...] = ()
    rig: Rig | None = None
    file: str = "estim_unit.c"
    #: more (find, replace) pairs in the same file, when one rule lives in two places
    also: tuple[tuple[str, str], ...] = ()
    #: for catches=None: why the wire cannot show it
    unseen: str = ""
    #: for catches=None: the unit options of the measured session (the rig's button or
    #: fault), and what the measurement shows
    measured: tuple[str, ...] = ()
    shows: str = ""


MUTANTS: tuple[Mutant, ...] = (
    # --- 5.1: what CONFIGURE_CHANNEL accepts ---
    Mutant(
        "amplitude_above_max",
        "5.1: CONFIGURE_CHANNEL amplitude at most amplitude_max_ua (accepts 60 mA on a 50 mA unit)",
        "amp > k->amplitude_max_ua ||",
        "amp > k->amplitude_max_ua + 10000u ||",
        boundaries.CONFIGURE_AMPLITUDE_RULE[1],
        ("boundaries CONFIGURE_CHANNEL",),
    ),
    Mutant(
        "amplitude_off_step",
        "5.1: CONFIGURE_CHANNEL amplitude a multiple of amplitude_step_ua",
        "amp > k->amplitude_max_ua ||\n        amp % k->amplitude_step_ua != 0)",
        "amp > k->amplitude_max_ua)",
        boundaries.CONFIGURE_AMPLITUDE_RULE[1],
        ("boundaries CONFIGURE_CHANNEL",),
    ),
    Mutant(
        "frequency_above_max",
        "5.1: CONFIGURE_CHANNEL frequency at most frequency_max_dhz",
        "f > k->frequency_max_dhz)",
        "f > k->frequency_max_dhz + 1u)",
        boundaries.FREQUENCY_RULE[1],
        ("boundaries CONFIGURE_CHANNEL",),
    ),
    Mutant(
        "frequency_below_min",
        "5.1: CONFIGURE_CHANNEL frequency at least frequency_min_dhz",
        "if (f < k->frequency_min_dhz ||",
        "if (f + 1u < k->frequency_min_dhz ||",
        boundaries.FREQUENCY_RULE[1],
        ("boundaries CONFIGURE_CHANNEL",),
    ),
    Mutant(
        "pulse_width_above_max",
        "5.1: CONFIGURE_CHANNEL pulse width at most pulse_width_max_us",
        "pw > k->pulse_width_max_us)",
        "pw > k->pulse_width_max_us + 1u)",
        boundaries.PULSE_WIDTH_RULE[1],
        ("boundaries CONFIGURE_CHANNEL",),
    ),
    Mutant(
        "pulse_width_below_min",
        "5.1: CONFIGURE_CHANNEL pulse width at least pulse_width_min_us",
        "if (pw < k->pulse_width_min_us ||",
        "if (pw + 1u < k->pulse_width_min_us ||",
        boundaries.PULSE_WIDTH_RULE[1],
        ("boundaries CONFIGURE_CHANNEL",),
    ),
    Mutant(
        "no_overlap_check",
        "5.1: a biphasic pulse's two phases must not overlap (2 x width x rate < 1 s)",
        "if (2u * (uint64_t)pw * fastest >= 10000000u)",
        "if (0 && 2u * (uint64_t)pw * fastest >= 10000000u)",
        boundaries.OVERLAP_RULE[1],
        ("boundaries CONFIGURE_CHANNEL",),
        OVERLAPPING,
    ),
    Mutant(
        "overlap_ignores_alternate_rate",
        "5.1: overlap at the highest rate the mode uses (dense-disperse: the alternate rate)",
        "        if (alt > f) {\n            fastest = alt;\n        }\n",
        "",
        boundaries.OVERLAP_RULE[1],
        ("boundaries CONFIGURE_CHANNEL",),
        OVERLAPPING,
    ),
    # --- 5.1: what START accepts ---
    Mutant(
        "dwell_below_min",
        "5.1: START dwell at least dwell_min_ms (accepts down to 1 s below: 59.0 s of 60)",
        "if (dwell < k->dwell_min_ms ||",
        "if (dwell + 1000u < k->dwell_min_ms ||",
        boundaries.DWELL_RULE[1],
        ("boundaries START",),
    ),
    Mutant(
        "dwell_above_max",
        "5.1: START dwell at most dwell_max_ms",
        "dwell > k->dwell_max_ms)",
        "dwell > k->dwell_max_ms + 1000u)",
        boundaries.DWELL_RULE[1],
        ("boundaries START",),
    ),
    Mutant(
        "watchdog_above_max",
        "5.1: START watchdog at most watchdog_max_ms (a host silent longer keeps output on)",
        "watchdog > k->watchdog_max_ms)",
        "watchdog > k->watchdog_max_ms + 100u)",
        boundaries.WATCHDOG_RULE[1],
        ("boundaries START",),
    ),
    Mutant(
        "watchdog_below_min",
        "5.1: START watchdog at least watchdog_min_ms",
        "if (watchdog < k->watchdog_min_ms ||",
        "if (watchdog + 100u < k->watchdog_min_ms ||",
        boundaries.WATCHDOG_RULE[1],
        ("boundaries START",),
    ),
    Mutant(
        "ramp_above_max",
        "5.1: START ramp at most ramp_max_ms",
        "if (ramp > k->ramp_max_ms ||",
        "if (ramp > k->ramp_max_ms + 1000u ||",
        boundaries.RAMP_RULE[1],
        ("boundaries START",),
    ),
    Mutant(
        "ramp_above_half_dwell",
        "5.1: START ramp at most dwell / 2 (the end ramp must fit)",
        "ramp > dwell / 2u)",
        "ramp > dwell)",
        boundaries.RAMP_RULE[1],
        ("boundaries START",),
    ),
    Mutant(
        "slew_twice_max",
        "5.1, 7: no channel slews faster than slew_max (lets a ramp run at twice the maximum)",
        "> (uint64_t)k->slew_max_ua_per_s * ramp",
        "> 2u * (uint64_t)k->slew_max_ua_per_s * ramp",
        boundaries.SLEW_RULE[1],
        ("boundaries START",),
    ),
    Mutant(
        "session_id_zero",
        "5.1: START session_id not 0",
        "    if (id == 0) {\n        return refuse(E_OUT_OF_RANGE, F_SESSION_ID, 0);\n    }\n",
        "",
        requests.REQUEST_RULES["START"][1],
        ("requests START",),
    ),
    Mutant(
        "channel_mask_unchecked",
        "5.1: START channel_mask only channels the unit has",
        "(mask >> k->channel_count) != 0",
        "0",
        requests.REQUEST_RULES["START"][1],
        ("requests START",),
    ),
    Mutant(
        "no_lead_off_check_at_start",
        "5.1: START refused LEAD_OFF on an open electrode",
        "&& u->hw.impedance_ohm(u->hw.ctx, ch) > k->lead_off_ohm",
        "&& 0",
        rig.OPEN_RULE[1],
        ("open channel",),
        OPEN,
        OPEN_RIG,
    ),
    # --- 6.2, 9: lead-off during output ---
    Mutant(
        "no_lead_off_during_output",
        "6.2, 9: an electrode opening during output latches LEAD_OFF within 10 ms",
        "    if (output_on(u)) {\n        electrodes(u, t);\n    }\n",
        "",
        rig.LEAD_OFF_RULE[1],
        ("lead-off",),
        LEAD_OFF,
        LEAD_OFF_RIG,
    ),
    # --- 10: ended sessions and copies ---
    Mutant(
        "ended_list_without_floor",
        "10: an ended session never restarts, however many sessions later (1.3's list only)",
        "    if (id <= u->ended_floor) {\n        return 1;\n    }\n",
        "",
        ended.RULE[1],
        ("ended sessions",),
    ),
    Mutant(
        "ended_never_refused",
        "10: a START naming an ended session is refused SESSION_ENDED",
        "if (session_ended(u, id)) {",
        "if (0 && session_ended(u, id)) {",
        ended.RULE[1],
        ("ended sessions",),
    ),
    Mutant(
        "start_copy_with_other_dwell_acked",
        "6.1, 10: a START naming the live session with another dwell is refused BAD_STATE",
        "a = id == u->session_id && estim_get_u32(p + 4) == u->dwell_ms &&",
        "a = id == u->session_id &&",
        "a START naming the live session with another dwell: BAD_STATE, no effect",
        ("sequences with output",),
    ),
    Mutant(
        "configure_copy_carried_out_again",
        "10: a copy of a remembered request has no second effect",
        "if (m->len == len && memcmp(m->frame, frame, len) == 0) {",
        "if (0 && m->len == len && memcmp(m->frame, frame, len) == 0) {",
        "a copy of a remembered CONFIGURE_CHANNEL is not carried out again",
        ("sequences with output",),
    ),
    # --- 9, 9.1: the watchdog ---
    Mutant(
        "watchdog_fed_by_any_request",
        "9.1: only a HEARTBEAT naming the live session feeds the watchdog (any request does)",
        "    u->stats.accepted++;\n    request(u, f, (uint8_t)n, t);",
        "    u->stats.accepted++;\n    u->fed_us = t;\n    request(u, f, (uint8_t)n, t);",
        watchdog.FEED_RULE[1],
        ("watchdog feeding",),
    ),
    Mutant(
        "watchdog_fed_by_heartbeat_0",
        "9.1: a HEARTBEAT with session_id 0 feeds nothing",
        "        return ACK; /* a keep-alive: feeds nothing (9.1) */",
        "        u->fed_us = t;\n        return ACK;",
        watchdog.FEED_RULE[1],
        ("watchdog feeding",),
    ),
    Mutant(
        "watchdog_fed_by_another_session",
        "9.1: a HEARTBEAT naming another session feeds nothing",
        "    return refuse(E_NO_SESSION, F_SESSION_ID, 0);\n}\n\nstatic struct answer clear_fault",
        "    u->fed_us = t;\n    return refuse(E_NO_SESSION, F_SESSION_ID, 0);\n}\n\n"
        "static struct answer clear_fault",
        watchdog.FEED_RULE[1],
        ("watchdog feeding",),
    ),
    Mutant(
        "watchdog_fed_by_set_amplitude",
        "9.1: SET_AMPLITUDE does not feed the watchdog",
        "    c = &u->ch[ch - 1];\n    c->seg_level_ua",
        "    u->fed_us = t;\n    c = &u->ch[ch - 1];\n    c->seg_level_ua",
        watchdog.FEED_RULE[1],
        ("watchdog feeding",),
    ),
    Mutant(
        "watchdog_never_trips",
        "9: output off and WATCHDOG latched when no HEARTBEAT arrives for watchdog_ms",
        "if (watchdog_at < best) {",
        "if (0 && watchdog_at < best) {",
        watchdog.WATCHDOG_RULE[1],
        ("watchdog",),
    ),
    Mutant(
        "watchdog_half_late",
        "9: the watchdog expires at exactly watchdog_ms (this one at 1.5 x)",
        "u->fed_us + (uint64_t)u->watchdog_ms * 1000u;",
        "u->fed_us + (uint64_t)u->watchdog_ms * 1500u;",
        watchdog.WATCHDOG_RULE[1],
        ("watchdog",),
    ),
    Mutant(
        "watchdog_fault_not_latched",
        "6.2: a fault stays latched until CLEAR_FAULT (a watchdog trip goes back to IDLE)",
        "    set_state(u, ESTIM_FAULT, t);",
        "    set_state(u, fault == ESTIM_FAULT_WATCHDOG ? ESTIM_IDLE : ESTIM_FAULT, t);",
        watchdog.WATCHDOG_RULE[1],
        ("watchdog",),
    ),
    # --- 6.1, 6.2: STOP and faults ---
    Mutant(
        "stop_leaves_output_on",
        "6.1, 9: STOP turns output off at once (this one ACKs and reports STOPPED only)",
        "    delivered = end_session(u, t, ESTIM_OFF_STOP, 0);\n    set_state(u, ESTIM_IDLE, t);",
        "    delivered = ms_since(t, u->start_us);",
        stopping.STOP_RULE[1],
        ("stop",),
    ),
    Mutant(
        "malformed_stop_ignored",
        "3.4: a good-CRC STOP stops whatever its flags, version or payload",
        "            stop(u, seq, STOP_UNSPECIFIED, t);",
        "            (void)seq;",
        requests.INVALID_RULES["flags"][1],
        ("invalid frames",),
    ),
    Mutant(
        "stop_clears_a_fault",
        "6.1: a STOP in FAULT is ACKed and leaves the fault latched",
        "        all_off(u); /* nothing is on; make sure of it */",
        "        all_off(u);\n        u->faults = 0;\n        set_state(u, ESTIM_IDLE, t);",
        watchdog.LATCHED_ANSWERS_RULE[1],
        ("watchdog",),
    ),
    Mutant(
        "start_accepted_in_fault",
        "6.1: START is refused FAULT_LATCHED while a fault is latched",
        "    if (u->state == ESTIM_FAULT) {\n        a = refuse(E_FAULT_LATCHED, F_NONE, 0);\n"
        "    } else if (output_on(u)) {",
        "    if (output_on(u)) {",
        watchdog.LATCHED_RULE[1],
        ("watchdog",),
    ),
    # --- 7: the output envelope ---
    Mutant(
        "ramp_twice_as_fast",
        "7: the start ramp rises at amplitude / ramp (this one at twice that)",
        "moved = (uint64_t)c->amplitude_ua * dt;",
        "moved = 2u * (uint64_t)c->amplitude_ua * dt;",
        ramps.RAMP_UP_RULE[1],
        ("session",),
    ),
    Mutant(
        "set_amplitude_jumps",
        "7: SET_AMPLITUDE slews at amplitude / ramp, never jumps",
        "c->seg_level_ua = level_at(u, c, t);",
        "c->seg_level_ua = amp;",
        boundaries.SET_AMPLITUDE_RULE[1],
        ("boundaries SET_AMPLITUDE",),
    ),
    Mutant(
        "no_end_ramp",
        "7: output ramps down to reach zero at the deadline (this one drops at the deadline)",
        "v = (uint64_t)c->amplitude_ua * (u->deadline_us - t) / ramp_us(u);",
        "v = 0xFFFFFFFFu;",
        ramps.RAMP_DOWN_RULE[1],
        ("session",),
    ),
    Mutant(
        "deadline_late",
        "9: output is zero at START + dwell_ms (this one 0.5 s later)",
        "u->deadline_us = t + (uint64_t)u->dwell_ms * 1000u;",
        "u->deadline_us = t + (uint64_t)u->dwell_ms * 1000u + 500000u;",
        ramps.COMPLETED_RULE[1],
        ("session",),
    ),
    Mutant(
        "clock_one_percent_slow",
        "9: a unit's clock drifts less than 100 ppm (this one runs 1% slow: 606 s for 600)",
        "    r->clock_us = monotonic_us();",
        "    r->clock_us = monotonic_us() / 101u * 100u;",
        ramps.CLOCK_RULE[1],
        ("session",),
        file="posix_pty.c",
    ),
    Mutant(
        "clock_one_percent_fast",
        "9: a unit's clock drifts less than 100 ppm (this one runs 1% fast)",
        "    r->clock_us = monotonic_us();",
        "    r->clock_us = monotonic_us() / 99u * 100u;",
        ramps.CLOCK_RULE[1],
        ("session",),
        file="posix_pty.c",
    ),
    # --- 3.4, 9: receiving ---
    Mutant(
        "crc_unchecked",
        "3.4: a frame whose CRC does not match is dropped (this one acts on it)",
        "if (estim_get_u32(f + n - 4) != estim_crc32(f, (size_t)n - 4u)) {",
        "if (0 && estim_get_u32(f + n - 4) != estim_crc32(f, (size_t)n - 4u)) {",
        requests.INVALID_RULES["crc"][1],
        ("invalid frames",),
    ),
    Mutant(
        "gap_ignored",
        "3.4, 9: a partial frame is dropped after 50 ms of silence",
        "if (t - u->rx_last_us >= ESTIM_GAP_US) {",
        "if (0 && t - u->rx_last_us >= ESTIM_GAP_US) {",
        framing.GAP_RULE[1],
        ("gap",),
    ),
    # --- not on the wire: the unit says the right thing, its output does not ---
    Mutant(
        "output_outside_the_mask",
        "7: channels outside the session's mask deliver nothing (this one drives every "
        "configured channel; STATUS still says 0 for them)",
        "        c->setpoint_ua = in ? c->amplitude_ua : 0;",
        "        c->setpoint_ua = c->configured ? c->amplitude_ua : 0;\n        (void)in;",
        None,
        ("stop", "session"),
        also=(
            (
                "        uint32_t level;\n        if (!(u->mask & (1u << (ch - 1u)))) {",
                "        uint32_t level;\n        if (!c->configured) {",
            ),
        ),
        unseen="STATUS reports a channel outside the session as 0 whatever it drives",
        shows="current on a channel outside the session's mask",
    ),
    Mutant(
        "output_stays_after_a_fault",
        "6.2: a fault turns all channels off at once (this one reports 0 while its output "
        "stage keeps the last level)",
        "    uint32_t delivered = ms_since(t, u->start_us);\n    all_off(u);",
        "    uint32_t delivered = ms_since(t, u->start_us);\n"
        "    if (off_reason != ESTIM_OFF_FAULT) {\n        all_off(u);\n    }",
        None,
        ("watchdog",),
        unseen="STATUS reports 0 in FAULT from its state, not from the output stage",
        shows="current still flowing after output_off for the watchdog's fault",
    ),
    Mutant(
        "stop_button_ignored",
        "6.2: the unit's own stop button turns output off and latches ESTOP (this one only "
        "reports BUTTON_PRESSED)",
        "    if (button == ESTIM_BUTTON_ESTOP) {\n        latch_fault(u, ESTIM_FAULT_ESTOP, 0, t);\n"
        "    }",
        "    (void)button;",
        None,
        ("stop",),
        unseen="no frame presses the unit's button: the vendor presses it during output",
        measured=("estop_at=0.3",),
        shows="current still flowing 50 ms after the button was pressed",
    ),
    Mutant(
        "over_current_ignored",
        "6.2: over-current latches OVER_CURRENT and turns output off (this one ignores "
        "the output stage's report)",
        "    advance(u, t);\n    latch_fault(u, fault, channel, t);",
        "    advance(u, t);\n    (void)fault;\n    (void)channel;",
        None,
        ("stop",),
        unseen="no frame causes an over-current: the vendor overloads the output",
        measured=("over_current_at=0.3:1",),
        shows="current still flowing 50 ms after the over-current",
    ),
)

#: the mutants an estim conformance run must catch, and the rest
ON_THE_WIRE = tuple(m for m in MUTANTS if m.catches is not None)
OFF_THE_WIRE = tuple(m for m in MUTANTS if m.catches is None)
