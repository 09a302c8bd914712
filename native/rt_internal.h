/*
 * rt_internal.h - what runtime.c (faults, engine driver, lifecycle) and
 * link.c (peer connections) share. Everything here belongs to the node's
 * event-loop thread; nothing is locked.
 */
#ifndef IVY_RT_INTERNAL_H
#define IVY_RT_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "runtime.h"
#include "wire.h"

#define EP_UFFD 1000u  /* epoll tags 0..63 are peer ids */
#define EP_STOP 1001u
#define EP_TIMER 1002u
#define IN_CAP (256u * 1024u)
#define UFFD_BATCH 64

enum mapping { MAP_NONE = 0, MAP_RO = 1, MAP_RW = 2 };

struct conn {
    int fd;                 /* -1: no link (self, or closed after BYE) */
    uint16_t peer;
    bool bye;               /* peer said BYE: its EOF is a clean close */
    bool want_out;          /* EPOLLOUT armed */
    uint8_t *in;            /* IN_CAP bytes of reassembly buffer */
    size_t in_len;
    uint8_t *out;           /* bytes the kernel did not take yet */
    size_t out_off, out_len, out_cap;
    uint64_t last_recv_ns, last_send_ns;
};

struct parked {
    struct parked *next;
    struct ivy_msg msg;
};

/* Messages waiting to be fed to the engine (unparked, or sent to self). */
struct fifo {
    struct ivy_msg *q;
    size_t head, len, cap;
};

struct ivy_rt {
    struct ivy_rt_config cfg;
    uint64_t npages;
    struct ivy_engine engine;
    struct ivy_page *pages;
    uint8_t *mapped;          /* enum mapping of each guest-view page, as last set here */
    uint8_t *remote;          /* the outstanding fault on this page sent a request */
    uint64_t waiting_remote;  /* pages with remote set: replies we expect soon */
    uint64_t *fault_t0;       /* when the outstanding fault on this page was read */
    uint32_t *fault_count;
    struct parked **parked;   /* per page, arrival order */
    struct fifo fifo;
    struct conn conns[IVY_MAX_NODES];
    int uffd, epfd, stopfd, timerfd, failfd;
    pthread_t thread;
    bool started, stopped, registered;
    bool leaving;             /* clean stop in progress: send errors no longer matter */
    volatile int failed;
    char error[IVY_RT_ERR_LEN];
    struct ivy_rt_stats stats;
};

static inline uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static inline uint8_t *vmm_page(struct ivy_rt *rt, uint64_t page)
{
    return (uint8_t *)(uintptr_t)(rt->cfg.vmm_addr + page * IVY_PAGE_SIZE);
}

/* runtime.c */
void rt_fail(struct ivy_rt *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void rt_describe_wait(struct ivy_rt *rt, char *buf, size_t len);
const char *rt_type_name(uint8_t type);
void rt_handle_frame(struct ivy_rt *rt, struct conn *c, const struct ivy_wire_frame *f);

/* link.c */
void link_send(struct ivy_rt *rt, struct conn *c, uint8_t type, const struct ivy_msg *m, const uint8_t *data);
void link_flush(struct ivy_rt *rt, struct conn *c);
void link_read(struct ivy_rt *rt, struct conn *c);
void link_close(struct ivy_rt *rt, struct conn *c);
void link_heartbeat(struct ivy_rt *rt);
void link_say_bye(struct ivy_rt *rt);

#endif
