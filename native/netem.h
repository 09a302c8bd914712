/*
 * A user-space link emulator for `ivyvm run --netns`: a switch between the
 * TAP devices of N network namespaces that delays, jitters, drops and
 * rate-limits every frame, as `tc netem` would on each node's egress.
 * (The kernels ivyvm is tested on lack sch_netem; this works on any kernel
 * with TUN/TAP.) Every frame a node sends is shaped once, on its way out:
 * the delay is one-way.
 */
#ifndef IVY_NETEM_H
#define IVY_NETEM_H

#include <stddef.h>
#include <stdint.h>

#define IVY_NETEM_MAX_PORTS 64
#define IVY_NETEM_FRAME_MAX 2048          /* TAP frames: MTU 1500 plus the Ethernet header */
#define IVY_NETEM_QUEUE 4096              /* frames in flight per output port */

struct ivy_netem_shape {
    uint64_t delay_ns;                    /* one-way, added to every frame */
    uint64_t jitter_ns;                   /* uniform in [-jitter, +jitter], the sum kept >= 0 */
    uint32_t loss_ppb;                    /* frames dropped per 10^9 */
    uint64_t rate_bps;                    /* bits per second leaving each port; 0: unlimited */
    uint64_t seed;                        /* PRNG seed for jitter and loss */
};

struct ivy_netem_stats {
    uint64_t forwarded;                   /* frames delivered */
    uint64_t dropped_loss;                /* frames dropped by the loss rate */
    uint64_t dropped_full;                /* frames dropped because a queue was full */
    uint64_t flooded;                     /* frames sent to every other port (unknown or broadcast MAC) */
};

/* Forward frames between the `nports` TAP fds until `stop_fd` becomes
 * readable (EOF included). Returns 0, or -1 with `err` set. */
int ivy_netem_run(const int *tap_fds, int nports, int stop_fd, const struct ivy_netem_shape *shape,
                  struct ivy_netem_stats *stats, char *err, size_t errlen);

#endif
