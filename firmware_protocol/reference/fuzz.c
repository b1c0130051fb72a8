/* Fuzz driver for the unit (README.md, "Fuzzing"). Build it with the sanitizers:
 *
 *   cc -std=c99 -Wall -Wextra -Werror -pedantic -g -O1 -fsanitize=address,undefined \
 *      -fno-sanitize-recover=all -o fuzz fuzz.c estim_unit.c estim_wire.c
 *   ./fuzz [FRAMES [SEED]]        (default 1000000 frames, seed 1)
 *
 * Part 1 pushes FRAMES bad frames through one unit; none may be accepted or
 * answered, and a GET_STATUS probe after every 64th must still be answered.
 * Part 2 sends FRAMES / 5 random valid-CRC requests, with the clock jumping,
 * and checks the unit's invariants after each. Exit 0 and one summary line on
 * stdout, or 1 and the first failure on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "estim_unit.h"

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13; /* xorshift64 */
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint32_t below(uint32_t n)
{
    return (uint32_t)(rnd() % n);
}

/* --- the fake hardware ------------------------------------------------------- */

struct fake {
    uint64_t now;
    uint32_t out[ESTIM_MAX_CHANNELS];
    uint32_t impedance;
    uint8_t tx[ESTIM_MAX_WIRE + 1];
    size_t tx_len;
    unsigned long frames_out;   /* frames the unit sent */
    unsigned long responses;    /* ... of kind 2 */
    uint16_t last_seq;          /* seq of the last response */
    int bad_output;
};

static uint64_t f_now(void *ctx)
{
    return ((struct fake *)ctx)->now;
}

static void f_set(void *ctx, uint8_t ch, uint32_t ua)
{
    ((struct fake *)ctx)->out[ch - 1] = ua;
}

static uint32_t f_imp(void *ctx, uint8_t ch)
{
    (void)ch;
    return ((struct fake *)ctx)->impedance;
}

/* Reassemble and check what the unit sends: every frame decodes, CRC good. */
static void f_write(void *ctx, const uint8_t *b, size_t n)
{
    struct fake *f = ctx;
    size_t i;
    for (i = 0; i < n; i++) {
        if (b[i] != 0) {
            if (f->tx_len < sizeof f->tx) {
                f->tx[f->tx_len++] = b[i];
            }
            continue;
        }
        {
            int len = estim_cobs_decode(f->tx, f->tx_len);
            f->frames_out++;
            if (len < 12 || f->tx_len > ESTIM_MAX_COBS ||
                estim_get_u32(f->tx + len - 4) != estim_crc32(f->tx, (size_t)len - 4u) ||
                estim_get_u16(f->tx + 6) != len - 12 || f->tx[0] != 1 || f->tx[5] != 0) {
                f->bad_output = 1;
            } else if (f->tx[1] == 2) {
                f->responses++;
                f->last_seq = estim_get_u16(f->tx + 2);
            }
            f->tx_len = 0;
        }
    }
}

/* --- building frames ---------------------------------------------------------- */

/* header + payload + CRC into f; returns its length */
static size_t frame(uint8_t *f, uint8_t kind, uint16_t seq, uint8_t type,
                    const uint8_t *p, size_t len)
{
    f[0] = 1;
    f[1] = kind;
    estim_put_u16(f + 2, seq);
    f[4] = type;
    f[5] = 0;
    estim_put_u16(f + 6, (uint16_t)len);
    memcpy(f + 8, p, len);
    estim_put_u32(f + 8 + len, estim_crc32(f, 8 + len));
    return 12 + len;
}

static void reseal(uint8_t *f, size_t n) /* recompute the CRC */
{
    estim_put_u32(f + n - 4, estim_crc32(f, n - 4));
}

/* A valid request of type 1..8 with plausible random fields. */
static size_t request(uint8_t *f, uint8_t type, uint16_t seq)
{
    uint8_t p[15];
    static const uint8_t size[9] = {0, 2, 15, 15, 9, 4, 1, 0, 0};
    static const uint32_t sessions[3] = {0x11111111u, 0x22222222u, 0x33333333u};
    size_t i;
    for (i = 0; i < sizeof p; i++) {
        p[i] = (uint8_t)rnd();
    }
    switch (type) {
    case 1: /* HELLO */
        p[0] = (uint8_t)below(3);
        p[1] = (uint8_t)below(3);
        break;
    case 2: /* CONFIGURE_CHANNEL: mostly the typical one */
        p[0] = (uint8_t)below(4);
        p[1] = (uint8_t)below(3);
        p[2] = below(4) ? 0 : (uint8_t)below(3);
        estim_put_u16(p + 3, below(4) ? 20 : (uint16_t)below(2000));
        estim_put_u16(p + 5, below(4) ? 250 : (uint16_t)below(600));
        estim_put_u32(p + 7, 100u * (below(4) ? 120 : below(600)));
        estim_put_u16(p + 11, below(4) ? 0 : (uint16_t)below(2000));
        estim_put_u16(p + 13, below(4) ? 0 : (uint16_t)below(70000));
        break;
    case 3: /* START */
        estim_put_u32(p, below(8) ? sessions[below(3)] + below(50) : 0);
        estim_put_u32(p + 4, below(4) ? 60000 + below(3) * 1000 : below(700000));
        estim_put_u32(p + 8, below(4) ? 5000 : below(40000));
        estim_put_u16(p + 12, below(4) ? 500 : (uint16_t)below(3000));
        p[14] = (uint8_t)(below(4) ? 1 + below(3) : below(256));
        break;
    case 4: /* SET_AMPLITUDE */
        estim_put_u32(p, sessions[below(3)] + below(50));
        p[4] = (uint8_t)below(4);
        estim_put_u32(p + 5, below(4) ? 100u * below(600) : (uint32_t)rnd());
        break;
    case 5: /* HEARTBEAT */
        estim_put_u32(p, below(4) ? 0 : sessions[below(3)] + below(50));
        break;
    default:
        break;
    }
    return frame(f, 1, seq, type, p, size[type]);
}

/* --- feeding ------------------------------------------------------------------ */

static struct estim_unit unit;
static struct fake hw_state;
static unsigned long fed_bytes;

/* COBS-encode f and feed it with its 0x00, split at random places. */
static void feed_frame(const uint8_t *f, size_t n)
{
    uint8_t wire[ESTIM_MAX_WIRE + 8];
    size_t len = estim_cobs_encode(f, n, wire);
    size_t at = 0;
    wire[len++] = 0;
    while (at < len) {
        size_t chunk = 1 + below((uint32_t)(len - at));
        estim_unit_receive(&unit, wire + at, chunk);
        at += chunk;
    }
    fed_bytes += len;
}

static void feed_raw(const uint8_t *b, size_t n)
{
    estim_unit_receive(&unit, b, n);
    fed_bytes += n;
}

static int fail(const char *what, unsigned long i)
{
    fprintf(stderr, "fuzz: %s (item %lu, seed state %llu)\n", what, i,
            (unsigned long long)rng_state);
    return 1;
}

static void boot(void)
{
    struct estim_hw hw;
    struct estim_config k;
    memset(&k, 0, sizeof k);
    k.channel_count = 2;
    k.flags = 1;
    k.waveforms = 7;
    k.modes = 7;
    k.amplitude_max_ua = 50000;
    k.amplitude_step_ua = 100;
    k.frequency_min_dhz = 10;
    k.frequency_max_dhz = 1500;
    k.pulse_width_min_us = 50;
    k.pulse_width_max_us = 500;
    k.slew_max_ua_per_s = 10000;
    k.watchdog_min_ms = 200;
    k.watchdog_max_ms = 2000;
    k.dwell_min_ms = 60000;
    k.dwell_max_ms = 600000;
    k.ramp_max_ms = 30000;
    k.lead_off_ohm = 20000;
    strcpy(k.model, "fuzz");
    hw.ctx = &hw_state;
    hw.now_us = f_now;
    hw.set_output = f_set;
    hw.impedance_ohm = f_imp;
    hw.write = f_write;
    hw.note = NULL;
    hw_state.now = 1000000;
    hw_state.impedance = 2000;
    if (estim_unit_init(&unit, &hw, &k, ESTIM_BOOT_POWER_ON) != 0) {
        abort();
    }
}

/* --- part 1: bad frames --------------------------------------------------------- */

enum { SUBST_ALL, SUBST, BURST, BITS, LENGTH_LIE, NOT_REQUEST, SLIP, RANDOM, GAP, CLASSES };
static const char *class_names[CLASSES] = {"every-byte-substitution", "random-substitution",
                                           "burst<=32bit", "2-4-bit-flips", "length-lie",
                                           "kind-not-request", "drop-or-dup-byte",
                                           "random-stream", "gap-split"};
static unsigned long made[CLASSES];

/* One bad frame of class c into f (decoded form, or raw bytes for RANDOM/GAP:
 * then *raw is set). Returns its length. */
static size_t bad_frame(int c, uint8_t *f, int *raw)
{
    uint8_t type = (uint8_t)(1 + below(8));
    size_t n = request(f, type, (uint16_t)rnd());
    size_t i, k;
    *raw = 0;
    switch (c) {
    case SUBST: /* one byte changed: CRC-32 catches every burst of <= 32 bits */
        i = below((uint32_t)n);
        f[i] = (uint8_t)(f[i] ^ (1 + below(255)));
        return n;
    case BURST: {
        uint32_t bits = 2 + below(31); /* burst length 2..32 bits */
        uint32_t start = below((uint32_t)(n * 8 - bits + 1));
        for (k = 0; k < bits; k++) {
            if (k == 0 || k == bits - 1 || (rnd() & 1)) {
                size_t bit = start + k;
                f[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            }
        }
        return n;
    }
    case BITS: { /* 2..4 distinct bits anywhere: under the CRC's Hamming distance */
        uint32_t count = 2 + below(3);
        uint32_t pos[4];
        for (k = 0; k < count; k++) {
            size_t j;
            int again;
            do {
                pos[k] = below((uint32_t)(n * 8));
                again = 0;
                for (j = 0; j < k; j++) {
                    again |= pos[j] == pos[k];
                }
            } while (again);
            f[pos[k] / 8] ^= (uint8_t)(1u << (pos[k] % 8));
        }
        return n;
    }
    case LENGTH_LIE: /* good CRC, header length wrong: check 5, never answered */
        if (type == 6) {
            type = 5;
            n = request(f, type, (uint16_t)rnd());
        }
        estim_put_u16(f + 6, (uint16_t)(estim_get_u16(f + 6) + 1 + below(300)));
        reseal(f, n);
        return n;
    case NOT_REQUEST: /* good CRC, kind other than 1: never answered */
        f[1] = (uint8_t)(below(2) ? 2 + below(2) : (below(2) ? 0 : 4 + below(252)));
        if (below(2)) {
            f[4] = (uint8_t)rnd();
        }
        reseal(f, n);
        return n;
    case SLIP: /* one byte dropped or duplicated: the length field and the CRC */
        i = below((uint32_t)n);
        if (below(2)) {
            memmove(f + i, f + i + 1, n - i - 1);
            return n - 1;
        }
        memmove(f + i + 1, f + i, n - i);
        return n + 1;
    case RANDOM: /* random bytes, 0x00 now and then, sometimes very long */
        *raw = 1;
        n = below(8) ? 1 + below(64) : 1 + below(600);
        for (i = 0; i < n; i++) {
            f[i] = below(16) ? (uint8_t)rnd() : 0;
        }
        return n;
    case GAP: /* the first part of a valid wire frame, then 50 ms of silence */
        *raw = 1;
        {
            uint8_t wire[ESTIM_MAX_WIRE];
            size_t len = estim_cobs_encode(f, n, wire);
            size_t cut = 1 + below((uint32_t)len - 1);
            feed_raw(wire, cut);
            hw_state.now += ESTIM_GAP_US + below(20000);
            estim_unit_poll(&unit);
            memcpy(f, wire + cut, len - cut);
            f[len - cut] = 0;
            return len - cut + 1;
        }
    default:
        return n;
    }
}

static int part1(unsigned long total)
{
    uint8_t f[700];
    uint8_t probe[16];
    unsigned long i = 0, probes = 0;
    unsigned long out_before;
    uint8_t type;
    size_t pos;
    unsigned v;
    /* every single-byte substitution of one valid frame of each request type */
    for (type = 1; type <= 8 && i < total; type++) {
        size_t n = request(f, type, (uint16_t)(0x1000 + type));
        for (pos = 0; pos < n; pos++) {
            for (v = 1; v < 256 && i < total; v++, i++) {
                uint8_t g[32];
                memcpy(g, f, n);
                g[pos] = (uint8_t)(g[pos] ^ v);
                out_before = hw_state.frames_out;
                feed_frame(g, n);
                made[SUBST_ALL]++;
                if (hw_state.frames_out != out_before) {
                    return fail("a substituted frame was answered", i);
                }
            }
        }
    }
    for (; i < total; i++) {
        int c = 1 + (int)below(CLASSES - 1);
        int raw;
        size_t n = bad_frame(c, f, &raw);
        made[c]++;
        out_before = hw_state.frames_out;
        if (raw) {
            feed_raw(f, n);
        } else {
            feed_frame(f, n);
        }
        hw_state.now += below(3000);
        estim_unit_poll(&unit);
        if (hw_state.frames_out != out_before) {
            return fail("a bad frame was answered", i);
        }
        if (i % 64 == 63) { /* resynchronised: a good frame right after is answered */
            uint8_t zero = 0;
            size_t pn = request(probe, 7, (uint16_t)i);
            feed_raw(&zero, 1);
            feed_frame(probe, pn);
            probes++;
            if (hw_state.frames_out != out_before + 1 || hw_state.last_seq != (uint16_t)i) {
                return fail("a good frame after a bad one was not answered", i);
            }
        }
    }
    if (unit.stats.accepted != probes || unit.state != ESTIM_IDLE || hw_state.bad_output) {
        return fail("a bad frame was accepted", i);
    }
    printf("part1 frames=%lu accepted=0 probes=%lu bytes=%lu", i, probes, fed_bytes);
    for (v = 0; v < CLASSES; v++) {
        printf(" %s=%lu", class_names[v], made[v]);
    }
    printf(" rejected:");
    for (v = 0; v < ESTIM_REJECT_COUNT; v++) {
        printf(" %lu", (unsigned long)unit.stats.rejected[v]);
    }
    printf("\n");
    return 0;
}

/* --- part 2: valid requests, invariants ----------------------------------------- */

static int part2(unsigned long total)
{
    uint8_t f[32];
    unsigned long i;
    uint8_t ch;
    for (i = 0; i < total; i++) {
        uint8_t type = (uint8_t)(1 + below(8));
        uint16_t seq = (uint16_t)below(40); /* small: copies and remembered answers */
        unsigned long before = hw_state.responses;
        size_t n;
        if (type == 6 && below(4)) {
            type = 5; /* fewer STOPs, so sessions run for a while */
        }
        n = request(f, type, seq);
        if (below(64) == 0) {
            hw_state.impedance = below(2) ? 2000 : 25000;
        }
        feed_frame(f, n);
        if (hw_state.responses != before + 1 || hw_state.last_seq != seq) {
            return fail("a valid request did not get exactly one answer", i);
        }
        /* time passes: a little, or up to the next deadline, or a lot */
        switch (below(4)) {
        case 0:
            hw_state.now += below(1000);
            break;
        case 1: {
            uint64_t d = estim_unit_next_deadline_us(&unit);
            if (d != UINT64_MAX && d > hw_state.now) {
                hw_state.now = d;
            }
            break;
        }
        default:
            hw_state.now += below(150000);
            break;
        }
        estim_unit_poll(&unit);
        if (below(5000) == 0) {
            estim_unit_button(&unit, (uint8_t)(1 + below(2)));
        }
        for (ch = 0; ch < ESTIM_MAX_CHANNELS; ch++) {
            uint32_t o = hw_state.out[ch];
            int on = unit.state >= ESTIM_RAMPING_UP && unit.state <= ESTIM_RAMPING_DOWN;
            if (o > 50000 || (o != 0 && !on) || (on && !(unit.mask & (1u << ch)) && o != 0)) {
                return fail("output where there must be none", i);
            }
            if (on && o > 0 && hw_state.now >= unit.deadline_us) {
                return fail("output after the dwell deadline", i);
            }
        }
        if (hw_state.bad_output) {
            return fail("the unit sent a malformed frame", i);
        }
    }
    printf("part2 requests=%lu frames_out=%lu accepted=%lu ended=%u\n", i, hw_state.frames_out,
           (unsigned long)unit.stats.accepted, unit.ended_count);
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long frames = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000ul;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    if (rng_state == 0) {
        rng_state = 1;
    }
    boot();
    if (part1(frames) != 0) {
        return 1;
    }
    boot();
    if (part2(frames / 5) != 0) {
        return 1;
    }
    return 0;
}
