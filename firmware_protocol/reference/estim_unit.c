/* The device state machine of PROTOCOL.md: sections 3.4 (receiving), 4 (HELLO),
 * 5.1/5.3 (checks and refusals), 6 (states), 7 (output envelope), 9 (watchdog,
 * deadline, gap) and 10 (duplicates). Section numbers in comments are the spec's. */
#include "estim_unit.h"

#include <string.h>

/* --- codes (sections 3.2, 5, 8) ------------------------------------------ */

enum { KIND_REQUEST = 1, KIND_RESPONSE = 2, KIND_EVENT = 3 };

enum {
    T_HELLO = 0x01, T_CONFIGURE = 0x02, T_START = 0x03, T_SET_AMPLITUDE = 0x04,
    T_HEARTBEAT = 0x05, T_STOP = 0x06, T_GET_STATUS = 0x07, T_CLEAR_FAULT = 0x08,
    T_ACK = 0x40, T_NACK = 0x41, T_DEVICE_INFO = 0x42, T_STATUS = 0x43,
    T_OUTPUT_STARTED = 0x80, T_RAMP_DONE = 0x81, T_AMPLITUDE_REACHED = 0x82,
    T_RAMP_DOWN_STARTED = 0x83, T_COMPLETED = 0x84, T_STOPPED = 0x85,
    T_FAULT = 0x86, T_BUTTON_PRESSED = 0x87, T_BOOTED = 0x88
};

enum {
    E_UNKNOWN_TYPE = 1, E_BAD_PAYLOAD = 2, E_UNSUPPORTED_VERSION = 3, E_BAD_STATE = 4,
    E_OUT_OF_RANGE = 5, E_NOT_CONFIGURED = 6, E_SESSION_ENDED = 7, E_NO_SESSION = 8,
    E_FAULT_LATCHED = 9, E_LEAD_OFF = 10, E_BAD_FLAGS = 11
};

enum {
    F_NONE = 0, F_CHANNEL = 1, F_WAVEFORM = 2, F_MODE = 3, F_FREQUENCY = 4,
    F_PULSE_WIDTH = 5, F_AMPLITUDE = 6, F_ALT_FREQUENCY = 7, F_SWITCH_PERIOD = 8,
    F_SESSION_ID = 9, F_DWELL = 10, F_RAMP = 11, F_WATCHDOG = 12, F_CHANNEL_MASK = 13,
    F_VERSION = 14
};

enum { MODE_CONTINUOUS = 0, MODE_BURST = 1, MODE_DENSE_DISPERSE = 2 };
enum { STOP_UNSPECIFIED = 0, STOP_FAULT = 16 };

#define PROTOCOL_VERSION 1u
#define IMPEDANCE_UNKNOWN 0xFFFFFFFFu
#define IMPEDANCE_PERIOD_US 10000u /* electrodes are measured at least this often */
#define MIN_STEP_US 1000u          /* the envelope is updated at most this often */

/* Request payload sizes (5.2); 0xFF: not a request type. */
static uint8_t request_size(uint8_t type)
{
    static const uint8_t size[9] = {0xFF, 2, 15, 15, 9, 4, 1, 0, 0};
    return type <= T_CLEAR_FAULT ? size[type] : 0xFF;
}

static int is_response_or_event(uint8_t type)
{
    return (type >= T_ACK && type <= T_STATUS) || (type >= T_OUTPUT_STARTED && type <= T_BOOTED);
}

/* --- small helpers -------------------------------------------------------- */

struct answer {
    uint8_t nack;
    uint8_t error;
    uint8_t field;
    uint8_t channel;
};

static const struct answer ACK = {0, 0, 0, 0};

static struct answer refuse(uint8_t error, uint8_t field, uint8_t channel)
{
    struct answer a;
    a.nack = 1;
    a.error = error;
    a.field = field;
    a.channel = channel;
    return a;
}

static int output_on(const struct estim_unit *u)
{
    return u->state == ESTIM_RAMPING_UP || u->state == ESTIM_RUNNING ||
           u->state == ESTIM_RAMPING_DOWN;
}

static uint32_t ms_since(uint64_t t, uint64_t since)
{
    return (uint32_t)((t - since) / 1000u);
}

static uint32_t uptime_ms(const struct estim_unit *u, uint64_t t)
{
    /* from clock_start_ms, wrapping at 2^32, as 5.2 says */
    return (uint32_t)((t - u->boot_us) / 1000u + u->cfg.clock_start_ms);
}

static void note_since(struct estim_unit *u, enum estim_note_kind kind, uint32_t value,
                       uint32_t value2, uint8_t channel, uint64_t t, uint64_t since)
{
    struct estim_note n;
    if (u->hw.note == NULL) {
        return;
    }
    n.kind = kind;
    n.session_id = u->session_id;
    n.value = value;
    n.value2 = value2;
    n.channel = channel;
    n.at_us = t;
    n.since_us = since;
    u->hw.note(u->hw.ctx, &n);
}

static void note(struct estim_unit *u, enum estim_note_kind kind, uint32_t value,
                 uint32_t value2, uint8_t channel, uint64_t t)
{
    note_since(u, kind, value, value2, channel, t, 0);
}

static void set_state(struct estim_unit *u, uint8_t state, uint64_t t)
{
    if (u->state != state) {
        note(u, ESTIM_NOTE_STATE, u->state, state, 0, t);
        u->state = state;
    }
}

/* --- sending (3.1, 3.2) --------------------------------------------------- */

static void send_frame(struct estim_unit *u, uint8_t kind, uint16_t seq, uint8_t type,
                       const uint8_t *payload, uint8_t len)
{
    uint8_t frame[ESTIM_MAX_FRAME];
    uint8_t wire[ESTIM_MAX_WIRE];
    size_t n;
    frame[0] = PROTOCOL_VERSION;
    frame[1] = kind;
    estim_put_u16(frame + 2, seq);
    frame[4] = type;
    frame[5] = 0;
    estim_put_u16(frame + 6, len);
    memcpy(frame + ESTIM_HEADER_LEN, payload, len);
    estim_put_u32(frame + ESTIM_HEADER_LEN + len, estim_crc32(frame, ESTIM_HEADER_LEN + len));
    n = estim_cobs_encode(frame, ESTIM_HEADER_LEN + len + ESTIM_CRC_LEN, wire);
    wire[n++] = 0;
    u->hw.write(u->hw.ctx, wire, n);
}

static void send_answer(struct estim_unit *u, uint16_t seq, uint8_t request_type,
                        struct answer a)
{
    uint8_t p[5];
    if (!a.nack) {
        p[0] = request_type;
        p[1] = u->state;
        send_frame(u, KIND_RESPONSE, seq, T_ACK, p, 2);
        return;
    }
    p[0] = request_type;
    p[1] = a.error;
    p[2] = a.field;
    p[3] = a.channel;
    p[4] = u->state;
    send_frame(u, KIND_RESPONSE, seq, T_NACK, p, 5);
}

/* An event: session_id and time_ms, then len - 8 bytes the caller filled in. */
static void send_event(struct estim_unit *u, uint8_t type, uint32_t session_id, uint64_t t,
                       uint8_t *p, uint8_t len)
{
    estim_put_u32(p, session_id);
    estim_put_u32(p + 4, uptime_ms(u, t));
    send_frame(u, KIND_EVENT, u->event_seq, type, p, len);
    u->event_seq++;
}

/* The live session's id, or 0 (for events that may come without one). */
static uint32_t live_session(const struct estim_unit *u)
{
    return output_on(u) ? u->session_id : 0;
}

/* --- the output envelope (section 7), integer uA and us ------------------- */

static uint64_t ramp_us(const struct estim_unit *u)
{
    return (uint64_t)u->ramp_ms * 1000u;
}

/* Time for channel c's level to go from its segment start to its setpoint. */
static uint64_t reach_us(const struct estim_unit *u, const struct estim_channel *c)
{
    uint32_t span = c->setpoint_ua > c->seg_level_ua ? c->setpoint_ua - c->seg_level_ua
                                                     : c->seg_level_ua - c->setpoint_ua;
    uint64_t num = (uint64_t)span * ramp_us(u);
    return (num + c->amplitude_ua - 1u) / c->amplitude_ua;
}

/* level_c(t), rounded down: moves from the segment start toward the setpoint at
 * k_c = A_c / R. Every product stays below 2^63 by the bounds of estim_unit_init. */
static uint32_t level_at(const struct estim_unit *u, const struct estim_channel *c, uint64_t t)
{
    uint64_t dt = t > c->seg_t0_us ? t - c->seg_t0_us : 0;
    uint64_t moved;
    if (c->setpoint_ua == c->seg_level_ua || dt >= reach_us(u, c)) {
        return c->setpoint_ua;
    }
    moved = (uint64_t)c->amplitude_ua * dt; /* < span x R + A_c */
    if (c->setpoint_ua > c->seg_level_ua) {
        return c->seg_level_ua + (uint32_t)(moved / ramp_us(u));
    }
    return c->seg_level_ua - (uint32_t)((moved + ramp_us(u) - 1u) / ramp_us(u));
}

/* k_c x (D - t), rounded down, capped at 2^32 - 1; 0 from D on. */
static uint32_t end_ramp_at(const struct estim_unit *u, const struct estim_channel *c,
                            uint64_t t)
{
    uint64_t v;
    if (t >= u->deadline_us) {
        return 0;
    }
    v = (uint64_t)c->amplitude_ua * (u->deadline_us - t) / ramp_us(u);
    return v > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)v;
}

/* Time for the level to move one amplitude step at k_c (at least MIN_STEP_US). */
static uint64_t step_us(const struct estim_unit *u, const struct estim_channel *c)
{
    uint64_t s = (uint64_t)u->cfg.amplitude_step_ua * ramp_us(u) / c->amplitude_ua;
    return s < MIN_STEP_US ? MIN_STEP_US : s;
}

static void drive(struct estim_unit *u, uint8_t ch, uint32_t ua)
{
    struct estim_channel *c = &u->ch[ch - 1];
    if (c->output_ua != ua) {
        c->output_ua = ua;
        u->hw.set_output(u->hw.ctx, ch, ua);
    }
}

/* Every channel to zero at once, no ramp (6.2); tells the hardware even if it
 * believes a channel is already at zero. */
static void all_off(struct estim_unit *u)
{
    uint8_t ch;
    for (ch = 1; ch <= u->cfg.channel_count; ch++) {
        u->ch[ch - 1].output_ua = 0;
        u->hw.set_output(u->hw.ctx, ch, 0);
    }
}

/* --- ending a session ----------------------------------------------------- */

/* Section 10: on the list of the last ESTIM_ENDED_SESSIONS ended ids, or at or below
 * the floor (the largest id that left the list): so an ended session never
 * restarts, however many sessions later, in 4 x 33 bytes. */
static int session_ended(const struct estim_unit *u, uint32_t id)
{
    uint8_t i;
    if (id <= u->ended_floor) {
        return 1;
    }
    for (i = 0; i < u->ended_count; i++) {
        if (u->ended[i] == id) {
            return 1;
        }
    }
    return 0;
}

/* Output off and the session on the ended list; returns delivered_ms. */
static uint32_t end_session(struct estim_unit *u, uint64_t t, uint8_t off_reason,
                            uint8_t fault)
{
    uint32_t delivered = ms_since(t, u->start_us);
    all_off(u);
    if (u->ended_count == ESTIM_ENDED_SESSIONS && u->ended[u->ended_next] > u->ended_floor) {
        u->ended_floor = u->ended[u->ended_next]; /* it leaves the list: the floor keeps it */
    }
    u->ended[u->ended_next] = u->session_id;
    u->ended_next = (uint8_t)((u->ended_next + 1u) % ESTIM_ENDED_SESSIONS);
    if (u->ended_count < ESTIM_ENDED_SESSIONS) {
        u->ended_count++;
    }
    note(u, ESTIM_NOTE_OUTPUT_OFF, delivered, off_reason, fault, t);
    return delivered;
}

/* A fault: all output off at once, latched until CLEAR_FAULT; FAULT, then
 * STOPPED(FAULT) if output was on (6.2). */
static void latch_fault(struct estim_unit *u, uint8_t fault, uint8_t channel, uint64_t t)
{
    uint8_t p[13];
    uint32_t session = live_session(u);
    int was_on = output_on(u);
    uint32_t delivered = 0;
    note(u, ESTIM_NOTE_FAULT, fault, 0, channel, t);
    if (was_on) {
        delivered = end_session(u, t, ESTIM_OFF_FAULT, fault);
    } else {
        all_off(u);
    }
    if (u->faults == 0) {
        u->fault_channel = channel;
    }
    if (fault >= 1 && fault <= 8) {
        u->faults |= (uint8_t)(1u << (fault - 1u));
    }
    set_state(u, ESTIM_FAULT, t);
    p[8] = fault;
    p[9] = channel;
    send_event(u, T_FAULT, session, t, p, 10);
    if (was_on) {
        p[8] = STOP_FAULT;
        estim_put_u32(p + 9, delivered);
        send_event(u, T_STOPPED, session, t, p, 13);
    }
}

static void complete(struct estim_unit *u)
{
    uint8_t p[12];
    uint64_t t = u->deadline_us; /* COMPLETED's time_ms is the deadline (9) */
    uint32_t delivered = end_session(u, t, ESTIM_OFF_COMPLETED, 0);
    set_state(u, ESTIM_IDLE, t);
    estim_put_u32(p + 8, delivered);
    send_event(u, T_COMPLETED, u->session_id, t, p, 12);
}

/* --- what time alone does: model instants (section 9.2) -------------------- */

/* When channel c's level reaches its setpoint (section 7). */
static uint64_t reach_at(const struct estim_unit *u, const struct estim_channel *c)
{
    return c->seg_t0_us + reach_us(u, c);
}

/* The end ramp reaches the level: A x (D - t) <= level(t) x R (section 7). */
static int end_ramp_reached(const struct estim_unit *u, const struct estim_channel *c,
                            uint64_t t)
{
    if (t >= u->deadline_us) {
        return 1;
    }
    return (uint64_t)c->amplitude_ua * (u->deadline_us - t) <=
           (uint64_t)level_at(u, c, t) * ramp_us(u);
}

/* The first instant the end ramp reaches some channel's level (it stays reached:
 * the line falls at least as fast as any level), by bisection in whole us. */
static uint64_t ramp_down_at(const struct estim_unit *u)
{
    uint64_t first = u->deadline_us;
    uint8_t ch;
    for (ch = 1; ch <= u->cfg.channel_count; ch++) {
        const struct estim_channel *c = &u->ch[ch - 1];
        uint64_t lo = c->seg_t0_us;
        uint64_t hi = u->deadline_us;
        if (!(u->mask & (1u << (ch - 1u)))) {
            continue;
        }
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2u;
            if (end_ramp_reached(u, c, mid)) {
                hi = mid;
            } else {
                lo = mid + 1u;
            }
        }
        if (lo < first) {
            first = lo;
        }
    }
    return first;
}

enum timed { TIMED_NONE, TIMED_DEADLINE, TIMED_WATCHDOG, TIMED_SLEWS, TIMED_RAMP_DOWN };

/* The next model instant at or after done_us, and what happens then. At one
 * instant the deadline comes first (it beats the watchdog, 9), then the watchdog,
 * then the slews' ends, then the end ramp (6.2's order of events). */
static enum timed next_timed(const struct estim_unit *u, uint64_t *at)
{
    enum timed what = TIMED_NONE;
    uint64_t best = UINT64_MAX;
    uint64_t watchdog_at = u->fed_us + (uint64_t)u->watchdog_ms * 1000u;
    uint8_t ch;
    if (!output_on(u)) {
        return TIMED_NONE;
    }
    best = u->deadline_us;
    what = TIMED_DEADLINE;
    if (watchdog_at < best) {
        best = watchdog_at;
        what = TIMED_WATCHDOG;
    }
    if (u->state != ESTIM_RAMPING_DOWN) {
        uint64_t slews = UINT64_MAX;
        uint64_t all = 0;
        uint64_t down = ramp_down_at(u);
        for (ch = 1; ch <= u->cfg.channel_count; ch++) {
            const struct estim_channel *c = &u->ch[ch - 1];
            uint64_t r;
            if (!(u->mask & (1u << (ch - 1u)))) {
                continue;
            }
            r = reach_at(u, c);
            if (c->reach_owed && r < slews) {
                slews = r;
            }
            if (r > all) {
                all = r;
            }
        }
        if (u->state == ESTIM_RAMPING_UP && all < slews) {
            slews = all; /* RAMP_DONE */
        }
        if (slews < u->done_us) {
            slews = u->done_us;
        }
        if (down < u->done_us) {
            down = u->done_us;
        }
        if (slews < best) {
            best = slews;
            what = TIMED_SLEWS;
        }
        if (down < best) {
            best = down;
            what = TIMED_RAMP_DOWN;
        }
    }
    *at = best < u->done_us ? u->done_us : best;
    return what;
}

/* The slews that end by m: AMPLITUDE_REACHED (lowest channel first), then
 * RAMP_DONE once every channel is at its setpoint (6.2). */
static void slews_done(struct estim_unit *u, uint64_t m)
{
    uint8_t p[13];
    int all = 1;
    uint8_t ch;
    for (ch = 1; ch <= u->cfg.channel_count; ch++) {
        struct estim_channel *c = &u->ch[ch - 1];
        if (!(u->mask & (1u << (ch - 1u)))) {
            continue;
        }
        if (reach_at(u, c) > m) {
            all = 0;
        } else if (c->reach_owed) {
            c->reach_owed = 0;
            p[8] = ch;
            estim_put_u32(p + 9, c->setpoint_ua);
            send_event(u, T_AMPLITUDE_REACHED, u->session_id, m, p, 13);
        }
    }
    if (u->state == ESTIM_RAMPING_UP && all) {
        set_state(u, ESTIM_RUNNING, m);
        send_event(u, T_RAMP_DONE, u->session_id, m, p, 8);
    }
}

static void ramp_down(struct estim_unit *u, uint64_t m)
{
    uint8_t p[12];
    uint8_t ch;
    set_state(u, ESTIM_RAMPING_DOWN, m);
    for (ch = 1; ch <= u->cfg.channel_count; ch++) {
        u->ch[ch - 1].reach_owed = 0; /* none is owed once RAMPING_DOWN begins */
    }
    /* the time left, rounded up like STATUS.remaining_ms */
    estim_put_u32(p + 8, (uint32_t)((u->deadline_us - m + 999u) / 1000u));
    send_event(u, T_RAMP_DOWN_STARTED, u->session_id, m, p, 12);
}

/* Drive each channel of the session at its envelope now, in amplitude steps. */
static void envelope(struct estim_unit *u, uint64_t t)
{
    uint8_t ch;
    for (ch = 1; ch <= u->cfg.channel_count; ch++) {
        struct estim_channel *c = &u->ch[ch - 1];
        uint32_t out;
        uint32_t level;
        if (!(u->mask & (1u << (ch - 1u)))) {
            continue;
        }
        level = level_at(u, c, t);
        out = end_ramp_at(u, c, t);
        if (level < out) {
            out = level;
        }
        drive(u, ch, out - out % u->cfg.amplitude_step_ua); /* steps of one amplitude step */
    }
}

static void electrodes(struct estim_unit *u, uint64_t t)
{
    uint8_t ch;
    for (ch = 1; ch <= u->cfg.channel_count; ch++) {
        if ((u->mask & (1u << (ch - 1u))) &&
            u->hw.impedance_ohm(u->hw.ctx, ch) > u->cfg.lead_off_ohm) {
            latch_fault(u, ESTIM_FAULT_LEAD_OFF, ch, t); /* when measured: now */
            return;
        }
    }
}

static void advance(struct estim_unit *u, uint64_t t)
{
    uint64_t m;
    enum timed what;
    if (u->rx_len > 0 || u->rx_discarding) {
        if (t - u->rx_last_us >= ESTIM_GAP_US) {
            if (!u->rx_discarding) {
                u->stats.rejected[ESTIM_REJECT_GAP]++;
            }
            u->rx_len = 0;
            u->rx_discarding = 0;
        }
    }
    u->polled_us = t;
    /* every model instant due by now, in order, each at its own instant: however
     * late this call, the events carry the instants of section 9.2 */
    while ((what = next_timed(u, &m)) != TIMED_NONE && m <= t) {
        u->done_us = m;
        if (what == TIMED_DEADLINE) {
            complete(u);
        } else if (what == TIMED_WATCHDOG) {
            note_since(u, ESTIM_NOTE_WATCHDOG, (uint32_t)(t - m), 0, 0, m, u->fed_us);
            latch_fault(u, ESTIM_FAULT_WATCHDOG, 0, m);
        } else if (what == TIMED_SLEWS) {
            slews_done(u, m);
        } else {
            ramp_down(u, m);
        }
    }
    u->done_us = t;
    if (output_on(u)) {
        electrodes(u, t);
    }
    if (output_on(u)) {
        envelope(u, t);
    }
}

/* --- requests (5.1, 5.3, 6.1) --------------------------------------------- */

static struct answer configure(struct estim_unit *u, const uint8_t *p)
{
    const struct estim_config *k = &u->cfg;
    uint8_t ch = p[0];
    uint8_t waveform = p[1];
    uint8_t mode = p[2];
    uint16_t f = estim_get_u16(p + 3);
    uint16_t pw = estim_get_u16(p + 5);
    uint32_t amp = estim_get_u32(p + 7);
    uint16_t alt = estim_get_u16(p + 11);
    uint16_t sw = estim_get_u16(p + 13);
    uint32_t fastest = f;
    struct estim_channel *c;
    if (u->state == ESTIM_FAULT) {
        return refuse(E_FAULT_LATCHED, F_NONE, 0);
    }
    if (u->state != ESTIM_IDLE) {
        return refuse(E_BAD_STATE, F_NONE, 0);
    }
    if (ch < 1 || ch > k->channel_count) {
        return refuse(E_OUT_OF_RANGE, F_CHANNEL, 0);
    }
    if (!(k->waveforms & (1u << waveform))) {
        return refuse(E_OUT_OF_RANGE, F_WAVEFORM, ch);
    }
    if (!(k->modes & (1u << mode))) {
        return refuse(E_OUT_OF_RANGE, F_MODE, ch);
    }
    if (f < k->frequency_min_dhz || f > k->frequency_max_dhz) {
        return refuse(E_OUT_OF_RANGE, F_FREQUENCY, ch);
    }
    if (pw < k->pulse_width_min_us || pw > k->pulse_width_max_us) {
        return refuse(E_OUT_OF_RANGE, F_PULSE_WIDTH, ch);
    }
    if (amp < k->amplitude_step_ua || amp > k->amplitude_max_ua ||
        amp % k->amplitude_step_ua != 0) {
        return refuse(E_OUT_OF_RANGE, F_AMPLITUDE, ch);
    }
    if (mode == MODE_CONTINUOUS) {
        if (alt != 0) {
            return refuse(E_OUT_OF_RANGE, F_ALT_FREQUENCY, ch);
        }
        if (sw != 0) {
            return refuse(E_OUT_OF_RANGE, F_SWITCH_PERIOD, ch);
        }
    } else if (mode == MODE_DENSE_DISPERSE) {
        if (alt < k->frequency_min_dhz || alt > k->frequency_max_dhz || alt == f) {
            return refuse(E_OUT_OF_RANGE, F_ALT_FREQUENCY, ch);
        }
        if (sw < 100 || sw > 60000) {
            return refuse(E_OUT_OF_RANGE, F_SWITCH_PERIOD, ch);
        }
        if (alt > f) {
            fastest = alt;
        }
    } else { /* BURST: alt is the burst rate, sw the burst length */
        if (alt < k->frequency_min_dhz || alt >= f) {
            return refuse(E_OUT_OF_RANGE, F_ALT_FREQUENCY, ch);
        }
        if (sw < 1 || sw > 60000 || (uint32_t)sw * alt >= 10000u ||
            (uint32_t)sw * f < 10000u) {
            return refuse(E_OUT_OF_RANGE, F_SWITCH_PERIOD, ch);
        }
    }
    if (2u * (uint64_t)pw * fastest >= 10000000u) { /* the two phases overlap */
        return refuse(E_OUT_OF_RANGE, F_PULSE_WIDTH, ch);
    }
    c = &u->ch[ch - 1];
    c->configured = 1;
    c->waveform = waveform;
    c->mode = mode;
    c->frequency_dhz = f;
    c->pulse_width_us = pw;
    c->amplitude_ua = amp;
    c->alt_frequency_dhz = alt;
    c->switch_ms = sw;
    return ACK;
}

/* START in IDLE: the checks of 5.1 in order, then the session begins. */
static struct answer start_checks(struct estim_unit *u, uint32_t id, uint32_t dwell,
                                  uint32_t ramp, uint16_t watchdog, uint8_t mask)
{
    const struct estim_config *k = &u->cfg;
    uint8_t ch;
    if (id == 0) {
        return refuse(E_OUT_OF_RANGE, F_SESSION_ID, 0);
    }
    if (session_ended(u, id)) {
        return refuse(E_SESSION_ENDED, F_SESSION_ID, 0);
    }
    if (mask == 0 || (mask >> k->channel_count) != 0) {
        return refuse(E_OUT_OF_RANGE, F_CHANNEL_MASK, 0);
    }
    for (ch = 1; ch <= k->channel_count; ch++) {
        if ((mask & (1u << (ch - 1u))) && !u->ch[ch - 1].configured) {
            return refuse(E_NOT_CONFIGURED, F_CHANNEL, ch);
        }
    }
    if (dwell < k->dwell_min_ms || dwell > k->dwell_max_ms) {
        return refuse(E_OUT_OF_RANGE, F_DWELL, 0);
    }
    if (watchdog < k->watchdog_min_ms || watchdog > k->watchdog_max_ms) {
        return refuse(E_OUT_OF_RANGE, F_WATCHDOG, 0);
    }
    if (ramp > k->ramp_max_ms || ramp > dwell / 2u) {
        return refuse(E_OUT_OF_RANGE, F_RAMP, 0);
    }
    for (ch = 1; ch <= k->channel_count; ch++) {
        if ((mask & (1u << (ch - 1u))) &&
            (uint64_t)u->ch[ch - 1].amplitude_ua * 1000u > (uint64_t)k->slew_max_ua_per_s * ramp) {
            return refuse(E_OUT_OF_RANGE, F_RAMP, ch);
        }
    }
    for (ch = 1; ch <= k->channel_count; ch++) {
        if ((mask & (1u << (ch - 1u))) && u->hw.impedance_ohm(u->hw.ctx, ch) > k->lead_off_ohm) {
            return refuse(E_LEAD_OFF, F_CHANNEL, ch);
        }
    }
    return ACK;
}

static void begin_session(struct estim_unit *u, const uint8_t *p, uint64_t t)
{
    uint8_t ch;
    u->session_id = estim_get_u32(p);
    u->dwell_ms = estim_get_u32(p + 4);
    u->ramp_ms = estim_get_u32(p + 8);
    u->watchdog_ms = estim_get_u16(p + 12);
    u->mask = p[14];
    u->start_us = t;
    u->deadline_us = t + (uint64_t)u->dwell_ms * 1000u;
    u->fed_us = t; /* the watchdog is armed by START (9.1) */
    u->done_us = t;
    for (ch = 1; ch <= u->cfg.channel_count; ch++) {
        struct estim_channel *c = &u->ch[ch - 1];
        int in = (u->mask & (1u << (ch - 1u))) != 0;
        c->setpoint_ua = in ? c->amplitude_ua : 0;
        c->seg_level_ua = 0;
        c->seg_t0_us = t;
        c->output_ua = 0;
        c->reach_owed = 0;
    }
    note(u, ESTIM_NOTE_OUTPUT_ON, u->dwell_ms, 0, u->mask, t);
    set_state(u, ESTIM_RAMPING_UP, t);
}

static void start(struct estim_unit *u, uint16_t seq, const uint8_t *p, uint64_t t)
{
    uint32_t id = estim_get_u32(p);
    struct answer a;
    uint8_t e[13];
    if (u->state == ESTIM_FAULT) {
        a = refuse(E_FAULT_LATCHED, F_NONE, 0);
    } else if (output_on(u)) {
        /* naming the live session as it began: a retransmission, ACK without
         * effect; with another dwell, ramp, watchdog or mask: not done (6.1, 10) */
        a = id == u->session_id && estim_get_u32(p + 4) == u->dwell_ms &&
                    estim_get_u32(p + 8) == u->ramp_ms &&
                    estim_get_u16(p + 12) == u->watchdog_ms && p[14] == u->mask
                ? ACK
                : refuse(E_BAD_STATE, F_NONE, 0);
    } else {
        a = start_checks(u, id, estim_get_u32(p + 4), estim_get_u32(p + 8),
                         estim_get_u16(p + 12), p[14]);
        if (!a.nack) {
            begin_session(u, p, t);
            send_answer(u, seq, T_START, a); /* the ACK before OUTPUT_STARTED (6.1) */
            estim_put_u32(e + 8, u->dwell_ms);
            e[12] = u->mask;
            send_event(u, T_OUTPUT_STARTED, u->session_id, t, e, 13);
            return;
        }
    }
    send_answer(u, seq, T_START, a);
}

static struct answer set_amplitude(struct estim_unit *u, const uint8_t *p, uint64_t t)
{
    uint32_t id = estim_get_u32(p);
    uint8_t ch = p[4];
    uint32_t amp = estim_get_u32(p + 5);
    struct estim_channel *c;
    if (u->state == ESTIM_FAULT) {
        return refuse(E_FAULT_LATCHED, F_NONE, 0);
    }
    if (u->state == ESTIM_RAMPING_DOWN) {
        return refuse(E_BAD_STATE, F_NONE, 0);
    }
    if (!output_on(u) || id != u->session_id) {
        return refuse(E_NO_SESSION, F_SESSION_ID, 0);
    }
    if (ch < 1 || ch > u->cfg.channel_count) {
        return refuse(E_OUT_OF_RANGE, F_CHANNEL, 0);
    }
    if (!(u->mask & (1u << (ch - 1u)))) {
        return refuse(E_OUT_OF_RANGE, F_CHANNEL, ch);
    }
    if (amp > u->cfg.amplitude_max_ua || amp % u->cfg.amplitude_step_ua != 0) {
        return refuse(E_OUT_OF_RANGE, F_AMPLITUDE, ch);
    }
    c = &u->ch[ch - 1];
    c->seg_level_ua = level_at(u, c, t); /* slew on from where the level is now */
    c->seg_t0_us = t;
    c->setpoint_ua = amp;
    c->reach_owed = 1;
    note(u, ESTIM_NOTE_SETPOINT, amp, 0, ch, t);
    return ACK;
}

static struct answer heartbeat(struct estim_unit *u, const uint8_t *p, uint64_t t)
{
    uint32_t id = estim_get_u32(p);
    if (id == 0) {
        return ACK; /* a keep-alive: feeds nothing (9.1) */
    }
    if (u->state == ESTIM_FAULT) {
        return refuse(E_FAULT_LATCHED, F_NONE, 0);
    }
    if (output_on(u) && id == u->session_id) {
        u->fed_us = t;
        return ACK;
    }
    return refuse(E_NO_SESSION, F_SESSION_ID, 0);
}

static struct answer clear_fault(struct estim_unit *u, uint64_t t)
{
    if (u->state == ESTIM_FAULT) {
        u->faults = 0;
        u->fault_channel = 0;
        set_state(u, ESTIM_IDLE, t);
    }
    return ACK;
}

/* STOP always acts (3.4, 10): output off at once, ACK, then STOPPED. */
static void stop(struct estim_unit *u, uint16_t seq, uint8_t reason, uint64_t t)
{
    uint8_t p[13];
    uint32_t delivered;
    if (!output_on(u)) {
        all_off(u); /* nothing is on; make sure of it */
        send_answer(u, seq, T_STOP, ACK);
        return;
    }
    delivered = end_session(u, t, ESTIM_OFF_STOP, 0);
    set_state(u, ESTIM_IDLE, t);
    send_answer(u, seq, T_STOP, ACK);
    p[8] = reason;
    estim_put_u32(p + 9, delivered);
    send_event(u, T_STOPPED, u->session_id, t, p, 13);
}

static size_t put_text(uint8_t *p, const char *s)
{
    size_t n = strlen(s);
    p[0] = (uint8_t)n;
    memcpy(p + 1, s, n);
    return n + 1;
}

static void device_info(struct estim_unit *u, uint16_t seq)
{
    const struct estim_config *k = &u->cfg;
    uint8_t p[46 + 3 * (1 + ESTIM_TEXT_MAX)];
    size_t n = 46;
    p[0] = PROTOCOL_VERSION;
    p[1] = k->channel_count;
    estim_put_u16(p + 2, k->flags);
    p[4] = k->waveforms;
    p[5] = k->modes;
    estim_put_u32(p + 6, k->amplitude_max_ua);
    estim_put_u32(p + 10, k->amplitude_step_ua);
    estim_put_u16(p + 14, k->frequency_min_dhz);
    estim_put_u16(p + 16, k->frequency_max_dhz);
    estim_put_u16(p + 18, k->pulse_width_min_us);
    estim_put_u16(p + 20, k->pulse_width_max_us);
    estim_put_u32(p + 22, k->slew_max_ua_per_s);
    estim_put_u16(p + 26, k->watchdog_min_ms);
    estim_put_u16(p + 28, k->watchdog_max_ms);
    estim_put_u32(p + 30, k->dwell_min_ms);
    estim_put_u32(p + 34, k->dwell_max_ms);
    estim_put_u32(p + 38, k->ramp_max_ms);
    estim_put_u32(p + 42, k->lead_off_ohm);
    n += put_text(p + n, k->model);
    n += put_text(p + n, k->serial);
    n += put_text(p + n, k->firmware);
    send_frame(u, KIND_RESPONSE, seq, T_DEVICE_INFO, p, (uint8_t)n);
}

static void hello(struct estim_unit *u, uint16_t seq, const uint8_t *p)
{
    if (p[0] == 0 || p[0] > p[1]) {
        send_answer(u, seq, T_HELLO, refuse(E_OUT_OF_RANGE, F_VERSION, 0));
    } else if (p[0] > PROTOCOL_VERSION) {
        send_answer(u, seq, T_HELLO, refuse(E_UNSUPPORTED_VERSION, F_VERSION, 0));
    } else {
        device_info(u, seq);
    }
}

static void status(struct estim_unit *u, uint16_t seq, uint64_t t)
{
    uint8_t p[20 + 12 * ESTIM_MAX_CHANNELS];
    uint8_t ch;
    int on = output_on(u);
    p[0] = u->state;
    estim_put_u32(p + 1, u->session_id);
    estim_put_u32(p + 5, uptime_ms(u, t));
    estim_put_u32(p + 9, on ? ms_since(t, u->start_us) : 0);
    estim_put_u32(p + 13, on ? (uint32_t)((u->deadline_us - t + 999u) / 1000u) : 0);
    p[17] = u->faults;
    p[18] = u->fault_channel;
    p[19] = u->cfg.channel_count;
    for (ch = 1; ch <= u->cfg.channel_count; ch++) {
        const struct estim_channel *c = &u->ch[ch - 1];
        uint8_t *r = p + 20 + 12 * (ch - 1);
        int live = on && (u->mask & (1u << (ch - 1u)));
        estim_put_u32(r, live ? c->output_ua : 0);
        estim_put_u32(r + 4, live ? c->setpoint_ua : 0);
        estim_put_u32(r + 8, live ? u->hw.impedance_ohm(u->hw.ctx, ch) : IMPEDANCE_UNKNOWN);
    }
    send_frame(u, KIND_RESPONSE, seq, T_STATUS, p, (uint8_t)(20 + 12 * u->cfg.channel_count));
}

/* CONFIGURE_CHANNEL, SET_AMPLITUDE, CLEAR_FAULT: remembered by seq and bytes (10).
 * The last ESTIM_REMEMBERED carried out, in the order they were: a copy answered
 * from memory does not refresh its slot; a new request with a remembered seq
 * takes that seq's slot and is the newest. */
static void remembered(struct estim_unit *u, const uint8_t *frame, uint8_t len, uint64_t t)
{
    uint16_t seq = estim_get_u16(frame + 2);
    uint8_t type = frame[4];
    const uint8_t *p = frame + ESTIM_HEADER_LEN;
    struct estim_memory *m = NULL;
    struct answer a;
    uint8_t i;
    for (i = 0; i < ESTIM_REMEMBERED; i++) {
        if (u->memory[i].used && u->memory[i].seq == seq) {
            m = &u->memory[i];
            if (m->len == len && memcmp(m->frame, frame, len) == 0) {
                a.nack = m->nack;
                a.error = m->error;
                a.field = m->field;
                a.channel = m->channel;
                send_answer(u, seq, type, a); /* with the state now */
                return;
            }
            break; /* same seq, other bytes: a new request, in this slot */
        }
    }
    for (i = 0; m == NULL && i < ESTIM_REMEMBERED; i++) {
        if (!u->memory[i].used) {
            m = &u->memory[i];
        }
    }
    if (m == NULL) { /* all used: forget the oldest (ages by unsigned difference: wrap-safe) */
        m = &u->memory[0];
        for (i = 1; i < ESTIM_REMEMBERED; i++) {
            if (u->memory_count - u->memory[i].order > u->memory_count - m->order) {
                m = &u->memory[i];
            }
        }
    }
    if (type == T_CONFIGURE) {
        a = configure(u, p);
    } else if (type == T_SET_AMPLITUDE) {
        a = set_amplitude(u, p, t);
    } else {
        a = clear_fault(u, t);
    }
    m->order = ++u->memory_count;
    m->used = 1;
    m->seq = seq;
    m->len = len;
    memcpy(m->frame, frame, len);
    m->nack = a.nack;
    m->error = a.error;
    m->field = a.field;
    m->channel = a.channel;
    send_answer(u, seq, type, a);
}

static void request(struct estim_unit *u, const uint8_t *frame, uint8_t len, uint64_t t)
{
    uint16_t seq = estim_get_u16(frame + 2);
    const uint8_t *p = frame + ESTIM_HEADER_LEN;
    switch (frame[4]) {
    case T_HELLO:
        hello(u, seq, p);
        break;
    case T_START:
        start(u, seq, p, t);
        break;
    case T_HEARTBEAT:
        send_answer(u, seq, T_HEARTBEAT, heartbeat(u, p, t));
        break;
    case T_GET_STATUS:
        status(u, seq, t);
        break;
    default: /* CONFIGURE_CHANNEL, SET_AMPLITUDE, CLEAR_FAULT (STOP never gets here) */
        remembered(u, frame, len, t);
        break;
    }
}

/* --- receiving (3.4) ------------------------------------------------------ */

static void reject(struct estim_unit *u, enum estim_reject why)
{
    u->stats.rejected[why]++;
}

static int payload_ok(uint8_t type, const uint8_t *p, uint16_t len)
{
    if (len != request_size(type)) {
        return 0;
    }
    if (type == T_CONFIGURE && (p[1] > 2 || p[2] > 2)) {
        return 0; /* checked enumerations: Waveform, Mode (5) */
    }
    return 1;
}

/* One frame between two 0x00, still COBS-encoded, in u->rx. */
static void frame_received(struct estim_unit *u, uint64_t t)
{
    uint8_t *f = u->rx;
    int n = estim_cobs_decode(f, u->rx_len);
    uint16_t plen;
    uint16_t seq;
    uint8_t type;
    if (n < 0) {
        reject(u, ESTIM_REJECT_COBS);
        return;
    }
    if (n < (int)(ESTIM_HEADER_LEN + ESTIM_CRC_LEN)) {
        reject(u, ESTIM_REJECT_LENGTH);
        return;
    }
    plen = (uint16_t)(n - (int)(ESTIM_HEADER_LEN + ESTIM_CRC_LEN));
    if (estim_get_u32(f + n - 4) != estim_crc32(f, (size_t)n - 4u)) {
        reject(u, ESTIM_REJECT_CRC);
        return;
    }
    seq = estim_get_u16(f + 2);
    type = f[4];
    if (f[1] == KIND_REQUEST && type == T_STOP) {
        /* a STOP is never lost to a format error (3.4) */
        if (f[0] == PROTOCOL_VERSION && f[5] == 0 && estim_get_u16(f + 6) == plen && plen == 1) {
            u->stats.accepted++;
            stop(u, seq, f[ESTIM_HEADER_LEN], t);
        } else {
            u->stats.malformed_stops++;
            stop(u, seq, STOP_UNSPECIFIED, t);
        }
        return;
    }
    if (estim_get_u16(f + 6) != plen) {
        reject(u, ESTIM_REJECT_LENGTH);
        return;
    }
    if (f[0] != PROTOCOL_VERSION) {
        reject(u, ESTIM_REJECT_VERSION);
        if (f[1] == KIND_REQUEST) {
            send_answer(u, seq, type, refuse(E_UNSUPPORTED_VERSION, F_VERSION, 0));
        }
        return;
    }
    if (f[1] != KIND_REQUEST) {
        /* kind 0 or 4..255; or a response or an event, which a device never
         * answers nor acts on (3.4): counted as reason kind either way */
        reject(u, ESTIM_REJECT_KIND);
        return;
    }
    if (is_response_or_event(type)) {
        reject(u, ESTIM_REJECT_KIND);
        send_answer(u, seq, type, refuse(E_UNKNOWN_TYPE, F_NONE, 0));
        return;
    }
    if (f[5] != 0) {
        reject(u, ESTIM_REJECT_FLAGS);
        send_answer(u, seq, type, refuse(E_BAD_FLAGS, F_NONE, 0));
        return;
    }
    if (request_size(type) == 0xFF) {
        reject(u, ESTIM_REJECT_TYPE);
        send_answer(u, seq, type, refuse(E_UNKNOWN_TYPE, F_NONE, 0));
        return;
    }
    if (!payload_ok(type, f + ESTIM_HEADER_LEN, plen)) {
        reject(u, ESTIM_REJECT_PAYLOAD);
        send_answer(u, seq, type, refuse(E_BAD_PAYLOAD, F_NONE, 0));
        return;
    }
    u->stats.accepted++;
    request(u, f, (uint8_t)n, t);
}

/* --- the public entry points ---------------------------------------------- */

static int text_ok(const char *s)
{
    return memchr(s, 0, ESTIM_TEXT_MAX + 1) != NULL;
}

int estim_config_valid(const struct estim_config *k)
{
    return k->channel_count >= 1 && k->channel_count <= ESTIM_MAX_CHANNELS &&
           (k->waveforms & ~7u) == 0 && (k->modes & ~7u) == 0 &&
           k->amplitude_step_ua >= 1 && k->amplitude_max_ua <= ESTIM_AMPLITUDE_LIMIT_UA &&
           (uint64_t)k->amplitude_step_ua * 100u <= k->amplitude_max_ua &&
           k->frequency_min_dhz >= 1 && k->frequency_min_dhz <= k->frequency_max_dhz &&
           k->pulse_width_min_us >= 1 && k->pulse_width_min_us <= k->pulse_width_max_us &&
           k->slew_max_ua_per_s >= 1 && k->watchdog_min_ms >= 1 &&
           k->watchdog_min_ms <= k->watchdog_max_ms && k->dwell_min_ms >= 1 &&
           k->dwell_min_ms <= k->dwell_max_ms && k->dwell_max_ms <= ESTIM_DWELL_LIMIT_MS &&
           k->ramp_max_ms <= ESTIM_RAMP_LIMIT_MS && text_ok(k->model) && text_ok(k->serial) &&
           text_ok(k->firmware);
}

int estim_unit_init(struct estim_unit *u, const struct estim_hw *hw,
                    const struct estim_config *cfg, uint8_t boot_cause)
{
    uint8_t p[9];
    uint64_t t;
    if (!estim_config_valid(cfg)) {
        return -1;
    }
    memset(u, 0, sizeof *u);
    u->hw = *hw;
    u->cfg = *cfg;
    t = u->hw.now_us(u->hw.ctx);
    u->boot_us = t;
    u->polled_us = t;
    u->done_us = t;
    u->state = ESTIM_IDLE;
    all_off(u);
    p[8] = boot_cause;
    send_event(u, T_BOOTED, 0, t, p, 9); /* event 0 (10) */
    note(u, ESTIM_NOTE_BOOT, boot_cause, 0, 0, t);
    return 0;
}

void estim_unit_receive(struct estim_unit *u, const uint8_t *bytes, size_t len)
{
    uint64_t t = u->hw.now_us(u->hw.ctx);
    size_t i;
    advance(u, t); /* time first: a late HEARTBEAT does not beat the watchdog */
    for (i = 0; i < len; i++) {
        uint8_t b = bytes[i];
        u->rx_last_us = t;
        if (b == 0) {
            if (!u->rx_discarding && u->rx_len > 0) {
                frame_received(u, t);
            }
            u->rx_len = 0; /* an empty frame is ignored (3.4) */
            u->rx_discarding = 0;
        } else if (!u->rx_discarding) {
            if (u->rx_len == ESTIM_MAX_COBS) {
                reject(u, ESTIM_REJECT_LENGTH); /* discard up to the next 0x00 */
                u->rx_discarding = 1;
                u->rx_len = 0;
            } else {
                u->rx[u->rx_len++] = b;
            }
        }
    }
    advance(u, t); /* events the requests made due now, after their answers */
}

void estim_unit_poll(struct estim_unit *u)
{
    advance(u, u->hw.now_us(u->hw.ctx));
}

static uint64_t earliest(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

uint64_t estim_unit_next_deadline_us(const struct estim_unit *u)
{
    uint64_t d = UINT64_MAX;
    uint64_t t = u->polled_us;
    uint64_t m;
    uint8_t ch;
    if (u->rx_len > 0 || u->rx_discarding) {
        d = u->rx_last_us + ESTIM_GAP_US;
    }
    if (next_timed(u, &m) != TIMED_NONE) {
        d = earliest(d, m); /* the next model instant (9.2) */
    }
    if (!output_on(u)) {
        return d;
    }
    d = earliest(d, t + IMPEDANCE_PERIOD_US);
    for (ch = 1; ch <= u->cfg.channel_count; ch++) {
        const struct estim_channel *c = &u->ch[ch - 1];
        if (!(u->mask & (1u << (ch - 1u)))) {
            continue;
        }
        /* moving output: one step at a time (a slew, or the end ramp) */
        if (level_at(u, c, t) != c->setpoint_ua ||
            (u->state == ESTIM_RAMPING_DOWN && c->output_ua > 0)) {
            d = earliest(d, t + step_us(u, c));
        }
    }
    return d;
}

void estim_unit_fault(struct estim_unit *u, uint8_t fault, uint8_t channel)
{
    uint64_t t = u->hw.now_us(u->hw.ctx);
    advance(u, t);
    latch_fault(u, fault, channel, t);
}

void estim_unit_button(struct estim_unit *u, uint8_t button)
{
    uint8_t p[9];
    uint64_t t = u->hw.now_us(u->hw.ctx);
    advance(u, t);
    if (button == ESTIM_BUTTON_ESTOP) {
        all_off(u); /* off first, then tell */
    }
    note(u, ESTIM_NOTE_BUTTON, button, 0, 0, t);
    p[8] = button;
    send_event(u, T_BUTTON_PRESSED, live_session(u), t, p, 9);
    if (button == ESTIM_BUTTON_ESTOP) {
        latch_fault(u, ESTIM_FAULT_ESTOP, 0, t);
    }
}
