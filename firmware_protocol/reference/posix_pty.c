/* Serve one estim unit (estim_unit.c) on a pseudo-terminal, the way
 * `estim simulate --pty` does: the first line on stdout is `PORT /dev/pts/N`;
 * with --json, one JSON line per thing the unit did, "t" in CLOCK_MONOTONIC
 * seconds. KEY=VALUE options set the unit's limits (README.md). SIGINT, SIGTERM
 * and SIGHUP end it cleanly, output off. */
#define _XOPEN_SOURCE 700 /* POSIX 2008 with XSI: posix_openpt, grantpt, ptsname */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "estim_unit.h"

struct rig {
    int master;
    int json;
    uint64_t clock_us; /* the clock value the unit last read */
    uint32_t impedance_ohm;
    uint32_t level[ESTIM_MAX_CHANNELS];
    uint64_t session_start_us; /* 0: no output */
    /* faults to inject, in us after output starts (0: none) */
    uint64_t lead_off_at, over_current_at, estop_at, internal_at;
    uint8_t lead_off_ch, over_current_ch;
    uint8_t open_mask; /* electrodes open from power-up (open_channel=CH), bit CH-1 */
    int lead_off, over_current_done, estop_done, internal_done;
    unsigned long dropped; /* bytes the host was not reading */
};

static int signal_pipe[2];

static void on_signal(int sig)
{
    int saved = errno;
    char c = (char)sig;
    if (write(signal_pipe[1], &c, 1) < 0) {
        /* the pipe is full: a signal is already pending */
    }
    errno = saved;
}

static uint64_t monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* --- the hardware the unit drives ------------------------------------------ */

static uint64_t hw_now(void *ctx)
{
    struct rig *r = ctx;
    r->clock_us = monotonic_us();
    return r->clock_us;
}

static void json_t(uint64_t t)
{
    printf("{\"t\": %lu.%06lu", (unsigned long)(t / 1000000u), (unsigned long)(t % 1000000u));
}

static void hw_set_output(void *ctx, uint8_t channel, uint32_t ua)
{
    struct rig *r = ctx;
    if (r->level[channel - 1] == ua) {
        return;
    }
    r->level[channel - 1] = ua;
    if (r->json) {
        json_t(r->clock_us);
        printf(", \"kind\": \"level\", \"channel\": %u, \"ua\": %lu}\n", channel,
               (unsigned long)ua);
        fflush(stdout);
    }
}

static uint32_t hw_impedance(void *ctx, uint8_t channel)
{
    struct rig *r = ctx;
    if ((r->lead_off && channel == r->lead_off_ch) || (r->open_mask & (1u << (channel - 1u)))) {
        return 0xFFFFFFFEu; /* an open electrode */
    }
    return r->impedance_ohm;
}

static void hw_write(void *ctx, const uint8_t *bytes, size_t len)
{
    struct rig *r = ctx;
    while (len > 0) {
        ssize_t n = write(r->master, bytes, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            r->dropped += len; /* nobody reads: the line drops it, as a UART would */
            return;
        }
        bytes += n;
        len -= (size_t)n;
    }
}

static const char *state_name(uint32_t s)
{
    static const char *names[] = {"IDLE", "RAMPING_UP", "RUNNING", "RAMPING_DOWN", "FAULT"};
    return s < 5 ? names[s] : "?";
}

static const char *fault_name(uint32_t f)
{
    static const char *names[] = {"?", "LEAD_OFF", "OVER_CURRENT", "WATCHDOG", "ESTOP", "INTERNAL"};
    return f < 6 ? names[f] : "?";
}

static void hw_note(void *ctx, const struct estim_note *n)
{
    struct rig *r = ctx;
    uint8_t ch;
    const char *sep = "";
    if (n->kind == ESTIM_NOTE_OUTPUT_ON) {
        r->session_start_us = n->at_us;
    } else if (n->kind == ESTIM_NOTE_OUTPUT_OFF) {
        r->session_start_us = 0;
        r->lead_off = 0;
        r->over_current_done = r->estop_done = r->internal_done = 0;
    }
    if (!r->json) {
        return;
    }
    json_t(n->at_us);
    switch (n->kind) {
    case ESTIM_NOTE_BOOT:
        printf(", \"kind\": \"boot\", \"cause\": \"%s\"}\n",
               n->value == 1 ? "POWER_ON" : n->value == 2 ? "RESET" : "INTERNAL_WATCHDOG");
        break;
    case ESTIM_NOTE_STATE:
        printf(", \"kind\": \"state\", \"previous\": \"%s\", \"state\": \"%s\"}\n",
               state_name(n->value), state_name(n->value2));
        break;
    case ESTIM_NOTE_OUTPUT_ON:
        printf(", \"kind\": \"output_on\", \"session_id\": %lu, \"dwell_ms\": %lu, \"channels\": [",
               (unsigned long)n->session_id, (unsigned long)n->value);
        for (ch = 1; ch <= ESTIM_MAX_CHANNELS; ch++) {
            if (n->channel & (1u << (ch - 1u))) {
                printf("%s%u", sep, ch);
                sep = ", ";
            }
        }
        printf("]}\n");
        break;
    case ESTIM_NOTE_OUTPUT_OFF:
        printf(", \"kind\": \"output_off\", \"session_id\": %lu, \"reason\": \"%s%s\", "
               "\"delivered_ms\": %lu}\n",
               (unsigned long)n->session_id,
               n->value2 == ESTIM_OFF_COMPLETED ? "completed"
               : n->value2 == ESTIM_OFF_STOP    ? "stop"
                                                : "fault:",
               n->value2 == ESTIM_OFF_FAULT ? fault_name(n->channel) : "",
               (unsigned long)n->value);
        break;
    case ESTIM_NOTE_SETPOINT:
        printf(", \"kind\": \"setpoint\", \"channel\": %u, \"ua\": %lu}\n", n->channel,
               (unsigned long)n->value);
        break;
    case ESTIM_NOTE_FAULT:
        printf(", \"kind\": \"fault\", \"fault\": \"%s\", \"channel\": %u}\n",
               fault_name(n->value), n->channel);
        break;
    case ESTIM_NOTE_WATCHDOG:
        printf(", \"kind\": \"watchdog\", \"last_frame\": %lu.%06lu, \"late_ms\": %lu.%03lu}\n",
               (unsigned long)(n->since_us / 1000000u), (unsigned long)(n->since_us % 1000000u),
               (unsigned long)(n->value / 1000u), (unsigned long)(n->value % 1000u));
        break;
    case ESTIM_NOTE_BUTTON:
        printf(", \"kind\": \"button\", \"button\": \"%s\"}\n",
               n->value == ESTIM_BUTTON_ESTOP ? "ESTOP" : "MARK");
        break;
    }
    fflush(stdout);
}

/* --- options --------------------------------------------------------------- */

/* A decimal number, times 10^scale, as an exact integer no larger than max. */
static int parse_fixed(const char *s, unsigned scale, uint64_t max, uint64_t *out)
{
    const uint64_t big = 100000000000000000u; /* 1e17: far above any limit */
    uint64_t v = 0;
    unsigned frac = 0;
    int digits = 0;
    int dot = 0;
    for (; *s; s++) {
        if (*s == '.' && !dot) {
            dot = 1;
        } else if (*s < '0' || *s > '9') {
            return -1;
        } else if (dot && frac == scale) {
            if (*s != '0') {
                return -1; /* finer than the unit can represent */
            }
            digits++;
        } else {
            if (v > big) {
                return -1;
            }
            v = v * 10u + (uint64_t)(*s - '0');
            frac += (unsigned)dot;
            digits++;
        }
    }
    for (; frac < scale && v <= big; frac++) {
        v *= 10u;
    }
    if (digits == 0 || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_text(const char *s, char *out)
{
    size_t n = strlen(s);
    size_t i;
    if (n > ESTIM_TEXT_MAX) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] > 0x7E) {
            return -1; /* printable ASCII, so it is UTF-8 and prints as JSON */
        }
    }
    memcpy(out, s, n + 1);
    return 0;
}

/* S[:CH], seconds after output starts, and a channel (default 1). */
static int parse_at(const char *s, uint64_t *at_us, uint8_t *ch)
{
    char buf[64];
    char *colon;
    uint64_t c = 1;
    if (strlen(s) >= sizeof buf) {
        return -1;
    }
    strcpy(buf, s);
    colon = strchr(buf, ':');
    if (colon) {
        *colon = 0;
        if (parse_fixed(colon + 1, 0, ESTIM_MAX_CHANNELS, &c) != 0 || c == 0) {
            return -1;
        }
    }
    if (parse_fixed(buf, 6, 86400000000u, at_us) != 0) {
        return -1;
    }
    *at_us += 1; /* 0 means "none" */
    *ch = (uint8_t)c;
    return 0;
}

struct number_option {
    const char *name;
    unsigned scale; /* decimal digits from the option's unit to the unit's */
    uint64_t max;
    int width; /* 8, 16 or 32: where it goes */
    size_t offset;
};

#define CFG(field) offsetof(struct estim_config, field)

static const struct number_option numbers[] = {
    {"channels", 0, ESTIM_MAX_CHANNELS, 8, CFG(channel_count)},
    {"amplitude_max_ma", 3, 0xFFFFFFFFu, 32, CFG(amplitude_max_ua)},
    {"amplitude_step_ma", 3, 0xFFFFFFFFu, 32, CFG(amplitude_step_ua)},
    {"slew_ma_per_s", 3, 0xFFFFFFFFu, 32, CFG(slew_max_ua_per_s)},
    {"frequency_min_hz", 1, 0xFFFFu, 16, CFG(frequency_min_dhz)},
    {"frequency_max_hz", 1, 0xFFFFu, 16, CFG(frequency_max_dhz)},
    {"pulse_width_min_us", 0, 0xFFFFu, 16, CFG(pulse_width_min_us)},
    {"pulse_width_max_us", 0, 0xFFFFu, 16, CFG(pulse_width_max_us)},
    {"watchdog_min_ms", 0, 0xFFFFu, 16, CFG(watchdog_min_ms)},
    {"watchdog_max_ms", 0, 0xFFFFu, 16, CFG(watchdog_max_ms)},
    {"dwell_min_s", 3, 0xFFFFFFFFu, 32, CFG(dwell_min_ms)},
    {"dwell_max_s", 3, 0xFFFFFFFFu, 32, CFG(dwell_max_ms)},
    {"ramp_max_s", 3, 0xFFFFFFFFu, 32, CFG(ramp_max_ms)},
    {"lead_off_ohm", 0, 0xFFFFFFFFu, 32, CFG(lead_off_ohm)},
    {"clock_start_ms", 0, 0xFFFFFFFFu, 32, CFG(clock_start_ms)},
};

static int set_option(struct estim_config *k, struct rig *r, const char *key, const char *value)
{
    size_t i;
    uint64_t v;
    for (i = 0; i < sizeof numbers / sizeof numbers[0]; i++) {
        const struct number_option *o = &numbers[i];
        unsigned char *field = (unsigned char *)k + o->offset;
        if (strcmp(key, o->name) != 0) {
            continue;
        }
        if (parse_fixed(value, o->scale, o->max, &v) != 0) {
            return -1;
        }
        if (o->width == 8) {
            *(uint8_t *)field = (uint8_t)v;
        } else if (o->width == 16) {
            *(uint16_t *)(void *)field = (uint16_t)v;
        } else {
            *(uint32_t *)(void *)field = (uint32_t)v;
        }
        return 0;
    }
    if (strcmp(key, "impedance_ohm") == 0) {
        if (parse_fixed(value, 0, 0xFFFFFFFFu, &v) != 0) {
            return -1;
        }
        r->impedance_ohm = (uint32_t)v;
        return 0;
    }
    if (strcmp(key, "open_channel") == 0) {
        if (parse_fixed(value, 0, ESTIM_MAX_CHANNELS, &v) != 0 || v == 0) {
            return -1;
        }
        r->open_mask |= (uint8_t)(1u << (v - 1u));
        return 0;
    }
    if (strcmp(key, "model") == 0) {
        return parse_text(value, k->model);
    }
    if (strcmp(key, "serial") == 0) {
        return parse_text(value, k->serial);
    }
    if (strcmp(key, "lead_off_at") == 0) {
        return parse_at(value, &r->lead_off_at, &r->lead_off_ch);
    }
    if (strcmp(key, "over_current_at") == 0) {
        return parse_at(value, &r->over_current_at, &r->over_current_ch);
    }
    if (strcmp(key, "estop_at") == 0) {
        uint8_t unused;
        return parse_at(value, &r->estop_at, &unused);
    }
    if (strcmp(key, "internal_at") == 0) {
        uint8_t unused;
        return parse_at(value, &r->internal_at, &unused);
    }
    return -2;
}

/* The reference unit of PROTOCOL.md section 13 ("DEVICE_INFO typical"). */
static void defaults(struct estim_config *k)
{
    memset(k, 0, sizeof *k);
    k->channel_count = 2;
    k->flags = 1; /* simulated: this is not hardware */
    k->waveforms = 7;
    k->modes = 7;
    k->amplitude_max_ua = 50000;
    k->amplitude_step_ua = 100;
    k->frequency_min_dhz = 10;
    k->frequency_max_dhz = 1500;
    k->pulse_width_min_us = 50;
    k->pulse_width_max_us = 500;
    k->slew_max_ua_per_s = 10000;
    k->watchdog_min_ms = 200;
    k->watchdog_max_ms = 2000;
    k->dwell_min_ms = 60000;
    k->dwell_max_ms = 600000;
    k->ramp_max_ms = 30000;
    k->lead_off_ohm = 20000;
    strcpy(k->model, "estim-ref-c");
    strcpy(k->serial, "REF-0001");
    strcpy(k->firmware, "ref-c-1.4");
}

/* --- the pty ---------------------------------------------------------------- */

static void make_raw(int fd)
{
    struct termios t;
    if (tcgetattr(fd, &t) != 0) {
        return;
    }
    t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    t.c_oflag &= ~(tcflag_t)OPOST;
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
    t.c_cflag |= CS8;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    tcsetattr(fd, TCSANOW, &t);
}

/* Injected faults due by now, in us after output started. */
static void inject(struct estim_unit *u, struct rig *r, uint64_t now)
{
    uint64_t on;
    if (r->session_start_us == 0) {
        return;
    }
    on = now - r->session_start_us + 1;
    if (r->lead_off_at && on >= r->lead_off_at) {
        r->lead_off = 1; /* the unit sees it at its next measurement */
    }
    if (r->over_current_at && on >= r->over_current_at && !r->over_current_done) {
        r->over_current_done = 1;
        estim_unit_fault(u, ESTIM_FAULT_OVER_CURRENT, r->over_current_ch);
    }
    if (r->estop_at && on >= r->estop_at && !r->estop_done) {
        r->estop_done = 1;
        estim_unit_button(u, ESTIM_BUTTON_ESTOP);
    }
    if (r->internal_at && on >= r->internal_at && !r->internal_done) {
        r->internal_done = 1;
        estim_unit_fault(u, ESTIM_FAULT_INTERNAL, 0);
    }
}

static uint64_t next_injection(const struct rig *r)
{
    uint64_t d = UINT64_MAX;
    const uint64_t at[4] = {r->lead_off_at, r->over_current_at, r->estop_at, r->internal_at};
    int i;
    if (r->session_start_us == 0) {
        return d;
    }
    for (i = 0; i < 4; i++) {
        if (at[i] && r->session_start_us + at[i] - 1 < d) {
            d = r->session_start_us + at[i] - 1;
        }
    }
    return d;
}

static int usage(const char *what, const char *arg)
{
    fprintf(stderr, "estim-ref-c: %s: %s\n", what, arg);
    return 2;
}

int main(int argc, char **argv)
{
    static struct estim_unit unit; /* about 1.3 KB; main owns it */
    struct estim_config cfg;
    struct estim_hw hw;
    struct rig rig;
    struct sigaction sa;
    struct pollfd fds[2];
    const char *slave_name;
    int slave;
    int i;
    int quiet = 0;

    memset(&rig, 0, sizeof rig);
    rig.impedance_ohm = 2000;
    defaults(&cfg);
    for (i = 1; i < argc; i++) {
        char key[64];
        const char *eq = strchr(argv[i], '=');
        int rc;
        if (strcmp(argv[i], "--json") == 0) {
            rig.json = 1;
            continue;
        }
        if (strcmp(argv[i], "--pty") == 0) {
            continue;
        }
        if (strcmp(argv[i], "-q") == 0 || strcmp(argv[i], "--quiet") == 0) {
            quiet = 1;
            continue;
        }
        if (eq == NULL || (size_t)(eq - argv[i]) >= sizeof key) {
            return usage("not an option (KEY=VALUE, --json, --pty)", argv[i]);
        }
        memcpy(key, argv[i], (size_t)(eq - argv[i]));
        key[eq - argv[i]] = 0;
        rc = set_option(&cfg, &rig, key, eq + 1);
        if (rc == -2) {
            return usage("unknown option", key);
        }
        if (rc != 0) {
            return usage("bad value", argv[i]);
        }
    }
    if (quiet) {
        rig.json = 0;
    }
    if (rig.open_mask >> cfg.channel_count) {
        return usage("bad options", "open_channel names a channel the unit does not have");
    }
    if (!estim_config_valid(&cfg)) {
        return usage("bad options", "the limits are inconsistent or out of bounds (README.md)");
    }

    rig.master = posix_openpt(O_RDWR | O_NOCTTY);
    if (rig.master < 0 || grantpt(rig.master) != 0 || unlockpt(rig.master) != 0 ||
        (slave_name = ptsname(rig.master)) == NULL) {
        perror("estim-ref-c: pty");
        return 1;
    }
    /* hold the slave open ourselves, so that the master never sees the host's
     * close (a host may close and reopen the port) */
    slave = open(slave_name, O_RDWR | O_NOCTTY);
    if (slave < 0) {
        perror("estim-ref-c: pty slave");
        return 1;
    }
    make_raw(slave);
    fcntl(rig.master, F_SETFL, fcntl(rig.master, F_GETFL) | O_NONBLOCK);
    if (pipe(signal_pipe) != 0) {
        perror("estim-ref-c: pipe");
        return 1;
    }
    fcntl(signal_pipe[1], F_SETFL, fcntl(signal_pipe[1], F_GETFL) | O_NONBLOCK);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    hw.ctx = &rig;
    hw.now_us = hw_now;
    hw.set_output = hw_set_output;
    hw.impedance_ohm = hw_impedance;
    hw.write = hw_write;
    hw.note = hw_note;
    printf("PORT %s\n", slave_name);
    fflush(stdout);
    estim_unit_init(&unit, &hw, &cfg, ESTIM_BOOT_POWER_ON); /* cfg was checked */

    fds[0].fd = rig.master;
    fds[0].events = POLLIN;
    fds[1].fd = signal_pipe[0];
    fds[1].events = POLLIN;
    for (;;) {
        uint64_t deadline = estim_unit_next_deadline_us(&unit);
        uint64_t injection = next_injection(&rig);
        uint64_t now = monotonic_us();
        int timeout = -1;
        if (injection < deadline) {
            deadline = injection;
        }
        if (deadline != UINT64_MAX) {
            uint64_t wait = deadline > now ? deadline - now : 0;
            timeout = (int)((wait + 999u) / 1000u); /* round up: never wake early */
        }
        if (poll(fds, 2, timeout) < 0 && errno != EINTR) {
            perror("estim-ref-c: poll");
            break;
        }
        if (fds[1].revents & POLLIN) {
            break;
        }
        if (fds[0].revents & POLLIN) {
            uint8_t buf[4096];
            ssize_t n = read(rig.master, buf, sizeof buf);
            if (n > 0) {
                estim_unit_receive(&unit, buf, (size_t)n);
            }
        }
        /* the rig first: an electrode opening now is measured by this poll */
        inject(&unit, &rig, monotonic_us());
        estim_unit_poll(&unit);
    }
    /* a clean end: output off, as a unit losing power */
    for (i = 1; i <= cfg.channel_count; i++) {
        rig.clock_us = monotonic_us();
        hw_set_output(&rig, (uint8_t)i, 0);
    }
    close(slave);
    close(rig.master);
    return 0;
}
