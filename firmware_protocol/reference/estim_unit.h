/* The device side of the estim serial protocol (firmware_protocol/PROTOCOL.md),
 * written from the specification alone.
 *
 * C99, no heap, no floating point, no global state: everything lives in one
 * struct estim_unit the caller owns, so several units can run in one program.
 * The caller provides the hardware (struct estim_hw) and drives the unit:
 *
 *     estim_unit_init(&unit, &hw, &config, ESTIM_BOOT_POWER_ON);
 *     for (;;) {
 *         wait for bytes from the line, or until estim_unit_next_deadline_us();
 *         estim_unit_receive(&unit, bytes, n);   (bytes from the host, any split)
 *         estim_unit_poll(&unit);                (what time alone does)
 *     }
 *
 * Every entry point reads the clock once, does its work and returns; none blocks.
 * The unit is not reentrant: call it from one thread (or one interrupt level).
 */
#ifndef ESTIM_UNIT_H
#define ESTIM_UNIT_H

#include <stddef.h>
#include <stdint.h>

#include "estim_wire.h"

#define ESTIM_MAX_CHANNELS 8u
#define ESTIM_TEXT_MAX 32u        /* a DEVICE_INFO string, in bytes */
#define ESTIM_REMEMBERED 8u       /* remembered answers (section 10) */
#define ESTIM_ENDED_SESSIONS 32u  /* ended session ids kept exactly (section 10: at least
                                     16); older ones are refused by the floor */
#define ESTIM_REMEMBERED_FRAME 27u /* the longest remembered request: CONFIGURE_CHANNEL */

/* Bounds estim_unit_init enforces on a configuration, so that the envelope's
 * 64-bit integer arithmetic can never overflow (README: "Limits"). */
#define ESTIM_AMPLITUDE_LIMIT_UA 1000000u /* 1 A */
#define ESTIM_RAMP_LIMIT_MS 3600000u      /* 1 h */
#define ESTIM_DWELL_LIMIT_MS 86400000u    /* 24 h */

/* the inter-byte gap of section 9 */
#define ESTIM_GAP_US 50000u

enum estim_state {
    ESTIM_IDLE = 0,
    ESTIM_RAMPING_UP = 1,
    ESTIM_RUNNING = 2,
    ESTIM_RAMPING_DOWN = 3,
    ESTIM_FAULT = 4
};

enum estim_fault {
    ESTIM_FAULT_LEAD_OFF = 1,
    ESTIM_FAULT_OVER_CURRENT = 2,
    ESTIM_FAULT_WATCHDOG = 3,
    ESTIM_FAULT_ESTOP = 4,
    ESTIM_FAULT_INTERNAL = 5
};

enum estim_button { ESTIM_BUTTON_ESTOP = 1, ESTIM_BUTTON_MARK = 2 };

enum estim_boot_cause {
    ESTIM_BOOT_POWER_ON = 1,
    ESTIM_BOOT_RESET = 2,
    ESTIM_BOOT_INTERNAL_WATCHDOG = 3
};

/* Rejection reasons of 3.4, for the counters in struct estim_unit.stats. */
enum estim_reject {
    ESTIM_REJECT_LENGTH = 0,
    ESTIM_REJECT_COBS,
    ESTIM_REJECT_CRC,
    ESTIM_REJECT_VERSION,
    ESTIM_REJECT_KIND,
    ESTIM_REJECT_FLAGS,
    ESTIM_REJECT_TYPE,
    ESTIM_REJECT_PAYLOAD,
    ESTIM_REJECT_GAP,
    ESTIM_REJECT_COUNT
};

/* What the unit did, for a log or a display (optional, struct estim_hw.note). */
enum estim_note_kind {
    ESTIM_NOTE_BOOT,       /* value = boot cause */
    ESTIM_NOTE_STATE,      /* value = previous state, value2 = new state */
    ESTIM_NOTE_OUTPUT_ON,  /* session_id, value = dwell_ms, channel = mask */
    ESTIM_NOTE_OUTPUT_OFF, /* session_id, value = delivered_ms, value2 = why
                              (ESTIM_OFF_*), channel = fault code if a fault */
    ESTIM_NOTE_SETPOINT,   /* channel, value = uA */
    ESTIM_NOTE_FAULT,      /* value = fault code, channel */
    ESTIM_NOTE_WATCHDOG,   /* since_us = the last feed, value = us late */
    ESTIM_NOTE_BUTTON      /* value = button */
};

enum estim_off_reason { ESTIM_OFF_COMPLETED, ESTIM_OFF_STOP, ESTIM_OFF_FAULT };

struct estim_note {
    enum estim_note_kind kind;
    uint32_t session_id;
    uint32_t value;
    uint32_t value2;
    uint8_t channel;
    uint64_t at_us;    /* when (the hw.now_us clock) */
    uint64_t since_us; /* ESTIM_NOTE_WATCHDOG: the watchdog's last feed */
};

/* The hardware. Every pointer but note is required. */
struct estim_hw {
    void *ctx;
    /* a monotonic clock in microseconds (it may start anywhere) */
    uint64_t (*now_us)(void *ctx);
    /* drive one channel (1..channel_count) at this many microamps; called only
     * when the value changes, and with 0 for every channel when output stops */
    void (*set_output)(void *ctx, uint8_t channel, uint32_t ua);
    /* measure one channel's electrode impedance, in ohms */
    uint32_t (*impedance_ohm)(void *ctx, uint8_t channel);
    /* send bytes to the host (whole frames, 0x00 included) */
    void (*write)(void *ctx, const uint8_t *bytes, size_t len);
    /* optional: told of everything the unit does */
    void (*note)(void *ctx, const struct estim_note *note);
};

/* The unit's limits: what DEVICE_INFO reports (5.2) and the checks of 5.1 use. */
struct estim_config {
    uint8_t channel_count; /* 1..8 */
    uint16_t flags;        /* DEVICE_INFO.flags: bit 0 = simulated */
    uint8_t waveforms;     /* bit w = Waveform w supported */
    uint8_t modes;         /* bit m = Mode m supported */
    uint32_t amplitude_max_ua;
    uint32_t amplitude_step_ua;
    uint16_t frequency_min_dhz;
    uint16_t frequency_max_dhz;
    uint16_t pulse_width_min_us;
    uint16_t pulse_width_max_us;
    uint32_t slew_max_ua_per_s;
    uint16_t watchdog_min_ms;
    uint16_t watchdog_max_ms;
    uint32_t dwell_min_ms;
    uint32_t dwell_max_ms;
    uint32_t ramp_max_ms;
    uint32_t lead_off_ohm;
    char model[ESTIM_TEXT_MAX + 1];    /* NUL-terminated UTF-8 */
    char serial[ESTIM_TEXT_MAX + 1];
    char firmware[ESTIM_TEXT_MAX + 1];
    /* not a limit: the unit's clock (time_ms) at power-up; it wraps at 2^32 */
    uint32_t clock_start_ms;
};

/* Everything below is the unit's own; read the stats if you like, write nothing. */

struct estim_channel {
    uint8_t configured;
    uint8_t waveform;
    uint8_t mode;
    uint16_t frequency_dhz;
    uint16_t pulse_width_us;
    uint32_t amplitude_ua; /* A_c of section 7 */
    uint16_t alt_frequency_dhz;
    uint16_t switch_ms;
    /* the live session's envelope (section 7) */
    uint32_t setpoint_ua;
    uint32_t seg_level_ua; /* level at seg_t0_us; it moves toward the setpoint */
    uint64_t seg_t0_us;
    uint32_t output_ua; /* what set_output was last told */
    uint8_t reach_owed; /* an AMPLITUDE_REACHED is owed (SET_AMPLITUDE) */
};

struct estim_memory {
    uint8_t used;
    uint32_t order; /* when it was carried out (estim_unit.memory_count then) */
    uint8_t len;
    uint16_t seq;
    uint8_t frame[ESTIM_REMEMBERED_FRAME];
    uint8_t nack; /* 0: ACK, 1: NACK */
    uint8_t error;
    uint8_t field;
    uint8_t channel;
};

struct estim_unit {
    struct estim_hw hw;
    struct estim_config cfg;
    uint64_t boot_us;
    uint8_t state;
    /* receiver */
    uint8_t rx[ESTIM_MAX_COBS];
    uint16_t rx_len;
    uint8_t rx_discarding; /* more than 253 bytes without a 0x00 */
    uint64_t rx_last_us;
    /* session */
    uint32_t session_id; /* live or last, 0 if none since boot */
    uint8_t mask;
    uint32_t ramp_ms;
    uint32_t dwell_ms;
    uint16_t watchdog_ms;
    uint64_t start_us;
    uint64_t deadline_us;
    uint64_t fed_us;   /* the watchdog's last feed */
    uint64_t polled_us; /* when the unit last did what time does */
    uint64_t done_us;   /* model instants up to here are carried out (section 9.2) */
    struct estim_channel ch[ESTIM_MAX_CHANNELS];
    /* faults */
    uint8_t faults;
    uint8_t fault_channel;
    /* section 10 */
    uint16_t event_seq;
    struct estim_memory memory[ESTIM_REMEMBERED];
    uint32_t memory_count; /* requests carried out and remembered since boot */
    uint32_t ended[ESTIM_ENDED_SESSIONS];
    uint8_t ended_count;
    uint8_t ended_next;
    uint32_t ended_floor; /* every id at or below it is refused as ended (10) */
    /* counters, for tests and diagnostics */
    struct {
        uint32_t accepted; /* requests that passed every check of 3.4 */
        uint32_t rejected[ESTIM_REJECT_COUNT];
        uint32_t malformed_stops; /* good-CRC STOPs that failed a later check */
    } stats;
};

/* 1 if estim_unit_init would take this configuration: channel_count 1..8, every
 * minimum at most its maximum and at least 1, amplitude_step_ua at most 1% of
 * amplitude_max_ua, the ESTIM_*_LIMIT bounds, strings of at most 32 bytes. */
int estim_config_valid(const struct estim_config *cfg);

/* Check the configuration, power up idle with output zero, send BOOTED.
 * Returns 0, or -1 (and does nothing) if the configuration is out of bounds. */
int estim_unit_init(struct estim_unit *u, const struct estim_hw *hw,
                    const struct estim_config *cfg, uint8_t boot_cause);

/* Bytes from the host, split anywhere. */
void estim_unit_receive(struct estim_unit *u, const uint8_t *bytes, size_t len);

/* Do what time alone does: the envelope, the events, the deadline, the watchdog,
 * the electrode check, the inter-byte gap. Call it by the next deadline. */
void estim_unit_poll(struct estim_unit *u);

/* The clock value (hw.now_us) by which estim_unit_poll must be called next;
 * UINT64_MAX if nothing is pending. */
uint64_t estim_unit_next_deadline_us(const struct estim_unit *u);

/* The hardware detected a fault (over-current, an internal failure, ...):
 * output off at once, the fault latches. channel 0 = the whole unit. */
void estim_unit_fault(struct estim_unit *u, uint8_t fault, uint8_t channel);

/* A button on the unit was pressed (ESTIM_BUTTON_ESTOP latches ESTOP). */
void estim_unit_button(struct estim_unit *u, uint8_t button);

#endif
