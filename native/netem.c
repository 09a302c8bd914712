/* See netem.h. One thread, ppoll with nanosecond timeouts, a FIFO per output port. */
#define _GNU_SOURCE
#include "netem.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

struct frame {
    uint64_t due_ns;
    uint16_t len;
    uint8_t data[IVY_NETEM_FRAME_MAX];
};

struct port {
    int fd;
    struct frame *queue;                  /* ring of IVY_NETEM_QUEUE */
    unsigned head, count;
    uint64_t last_due_ns;                 /* frames leave in order, as netem with a rate keeps them */
    uint8_t mac[6];
    int mac_known;
};

_Static_assert(IVY_NETEM_FRAME_MAX <= UINT16_MAX, "frame length must fit its field");
_Static_assert((IVY_NETEM_QUEUE & (IVY_NETEM_QUEUE - 1)) == 0, "queue size must be a power of two");

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: jitter and loss need speed and reproducibility, not secrecy. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static void enqueue(struct port *out, const uint8_t *data, uint16_t len, uint64_t arrival_ns,
                    const struct ivy_netem_shape *shape, uint64_t *rng, struct ivy_netem_stats *stats)
{
    if (shape->loss_ppb && next_random(rng) % 1000000000ull < shape->loss_ppb) {
        stats->dropped_loss++;
        return;
    }
    if (out->count == IVY_NETEM_QUEUE) {
        stats->dropped_full++;
        return;
    }
    int64_t delay = (int64_t)shape->delay_ns;
    if (shape->jitter_ns) {
        int64_t span = 2 * (int64_t)shape->jitter_ns + 1;
        delay += (int64_t)(next_random(rng) % (uint64_t)span) - (int64_t)shape->jitter_ns;
        if (delay < 0)
            delay = 0;
    }
    uint64_t due = arrival_ns + (uint64_t)delay;
    if (due < out->last_due_ns)
        due = out->last_due_ns;
    if (shape->rate_bps) {
        /* The link is busy sending this frame (plus preamble and gap: 20 bytes) for this long. */
        uint64_t wire_ns = ((uint64_t)len + 20) * 8ull * 1000000000ull / shape->rate_bps;
        uint64_t start = arrival_ns > out->last_due_ns ? arrival_ns : out->last_due_ns;
        if (start + wire_ns > due)
            due = start + wire_ns;
    }
    out->last_due_ns = due;
    struct frame *slot = &out->queue[(out->head + out->count) & (IVY_NETEM_QUEUE - 1)];
    slot->due_ns = due;
    slot->len = len;
    memcpy(slot->data, data, len);
    out->count++;
}

/* Write every frame now due; returns the earliest due time still queued, or UINT64_MAX. */
static uint64_t deliver(struct port *ports, int nports, uint64_t now, struct ivy_netem_stats *stats)
{
    uint64_t next = UINT64_MAX;
    for (int i = 0; i < nports; i++) {
        struct port *p = &ports[i];
        while (p->count) {
            struct frame *f = &p->queue[p->head];
            if (f->due_ns > now) {
                if (f->due_ns < next)
                    next = f->due_ns;
                break;
            }
            /* A TAP write is all or nothing; a full device queue drops, as a wire would. */
            if (write(p->fd, f->data, f->len) == (ssize_t)f->len)
                stats->forwarded++;
            else
                stats->dropped_full++;
            p->head = (p->head + 1) & (IVY_NETEM_QUEUE - 1);
            p->count--;
        }
    }
    return next;
}

static void route(struct port *ports, int nports, int from, const uint8_t *data, uint16_t len, uint64_t now,
                  const struct ivy_netem_shape *shape, uint64_t *rng, struct ivy_netem_stats *stats)
{
    if (len < 14)
        return;                           /* not even an Ethernet header */
    struct port *src = &ports[from];
    memcpy(src->mac, data + 6, 6);        /* learn: each TAP has one sender */
    src->mac_known = 1;
    for (int i = 0; i < nports; i++) {
        if (i != from && ports[i].mac_known && memcmp(ports[i].mac, data, 6) == 0) {
            enqueue(&ports[i], data, len, now, shape, rng, stats);
            return;
        }
    }
    stats->flooded++;
    for (int i = 0; i < nports; i++)
        if (i != from)
            enqueue(&ports[i], data, len, now, shape, rng, stats);
}

int ivy_netem_run(const int *tap_fds, int nports, int stop_fd, const struct ivy_netem_shape *shape,
                  struct ivy_netem_stats *stats, char *err, size_t errlen)
{
    if (nports < 2 || nports > IVY_NETEM_MAX_PORTS) {
        snprintf(err, errlen, "%d ports: between 2 and %d are needed", nports, IVY_NETEM_MAX_PORTS);
        return -1;
    }
    struct port ports[IVY_NETEM_MAX_PORTS];
    struct pollfd fds[IVY_NETEM_MAX_PORTS + 1];
    memset(ports, 0, sizeof ports);
    memset(stats, 0, sizeof *stats);
    /* A sleeping thread's wake-ups are late by up to its timer slack (50 us by
     * default): that much error on every frame would swamp a 100 us delay. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    int rc = -1;
    for (int i = 0; i < nports; i++) {
        ports[i].fd = tap_fds[i];
        ports[i].queue = malloc(sizeof(struct frame) * IVY_NETEM_QUEUE);
        if (!ports[i].queue) {
            snprintf(err, errlen, "out of memory for %d frame queues", nports);
            goto out;
        }
        fds[i] = (struct pollfd){ .fd = tap_fds[i], .events = POLLIN };
    }
    fds[nports] = (struct pollfd){ .fd = stop_fd, .events = POLLIN };
    uint64_t rng = shape->seed ? shape->seed : 0x9e3779b97f4a7c15ull;
    uint8_t buf[IVY_NETEM_FRAME_MAX];
    for (;;) {
        uint64_t now = now_ns();
        uint64_t next = deliver(ports, nports, now, stats);
        struct timespec wait, *timeout = NULL;
        if (next != UINT64_MAX) {
            uint64_t left = next > now ? next - now : 0;
            wait.tv_sec = (time_t)(left / 1000000000ull);
            wait.tv_nsec = (long)(left % 1000000000ull);
            timeout = &wait;
        }
        int ready = ppoll(fds, (nfds_t)nports + 1, timeout, NULL);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, errlen, "ppoll: %s", strerror(errno));
            goto out;
        }
        if (fds[nports].revents) {
            rc = 0;                       /* told to stop, or the supervisor is gone */
            goto out;
        }
        for (int i = 0; i < nports; i++) {
            if (fds[i].revents & (POLLERR | POLLNVAL)) {
                snprintf(err, errlen, "TAP device of port %d failed", i);
                goto out;
            }
            if (!(fds[i].revents & POLLIN))
                continue;
            /* Drain a bounded batch so one busy port cannot starve the others. */
            for (int batch = 0; batch < 64; batch++) {
                ssize_t n = read(tap_fds[i], buf, sizeof buf);
                if (n < 0) {
                    if (errno == EAGAIN || errno == EINTR)
                        break;
                    snprintf(err, errlen, "reading port %d: %s", i, strerror(errno));
                    goto out;
                }
                /* Stamped after the read, not once per wakeup: a frame that arrived while this
                 * thread was preempted after ppoll() would otherwise leave early by that much
                 * (CI saw a 2 x 500 us round trip in 950 us under load). */
                route(ports, nports, i, buf, (uint16_t)n, now_ns(), shape, &rng, stats);
            }
        }
    }
out:
    for (int i = 0; i < nports; i++)
        free(ports[i].queue);
    return rc;
}
