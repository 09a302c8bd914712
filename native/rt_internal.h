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

#include "aead.h"
#include "runtime.h"
#include "trace_hooks.h"
#include "wire.h"

#define EP_UFFD 1000u  /* epoll tags 0..63 are peer ids */
#define EP_STOP 1001u
#define EP_TIMER 1002u
#define IN_CAP (256u * 1024u)
#define UFFD_BATCH 64
#define NO_WATCH 0xFFFFu

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
    uint32_t pass_frames;   /* frames to this peer since the last link_end_pass (cfg.batch) */
    struct ivy_aead *tx, *rx; /* this link's sealing keys (aead.h); NULL only for insecure_plaintext */
};

/* The last DSM message sent or received for a page (probe.c). */
struct page_msg {
    uint64_t ns;   /* CLOCK_MONOTONIC; 0: none yet */
    uint8_t type;
    uint16_t peer;
};

/* What the runtime keeps per page (the engine's entry is struct ivy_page, in `pages`). */
struct rt_page {
    uint64_t fault_t0;        /* when the outstanding fault on this page was read */
    uint64_t hold_until;      /* CLOCK_MONOTONIC ns, of the last hold window started */
    uint64_t watch_val;       /* the watched word's value when the page was granted */
    struct parked *parked;    /* arrival order: held by the engine (PARK) */
    struct page_msg last_sent, last_recv;  /* probe.c */
    uint32_t fault_count;
    /* A write grant's window ends early once the faulting thread's word
     * changed: its access demonstrably ran (offsets 8-aligned, NO_WATCH: none). */
    uint16_t write_off;       /* first write fault's word in the page since the last grant */
    uint16_t watch_off;       /* the word watched during this page's window */
    uint16_t hint_off;        /* the outstanding READ is hinted write-soon: its faulting word (predict.c) */
    uint8_t mapped;           /* enum mapping of the guest-view page, as last set here */
    uint8_t remote;           /* the outstanding fault on this page sent a request */
    uint8_t prefetch;         /* that request is a prefetch: no fault waited when it was sent */
};

/* A registered vCPU thread and its time blocked in faults (probe.c). */
struct vcpu_slot {
    uint32_t tid;      /* 0 until published */
    uint16_t vcpu;
    uint64_t page;     /* the page it waits for, while since != 0 */
    uint64_t since;    /* its current fault was read at (0: not blocked) */
    uint64_t faults, blocked_ns, max_ns;
};

struct parked {
    struct parked *next;
    struct ivy_msg msg;
    bool held;                /* parked by a hold window (stats.held), not by an acquisition */
};

/* The write-soon predictor (predict.c): one for the node. */
#define PRED_RECENT 8
struct predictor {
    uint64_t recent[PRED_RECENT]; /* page + 1 of unhinted remote reads not written yet; 0: free */
    unsigned next;                /* the ring's oldest slot */
    int score;                    /* hits up, misses down; hint while high */
    uint64_t watch_page;          /* page + 1 of the last writable grant not judged yet; 0: none */
    uint64_t watch_val;           /* the word its read faulted on, as granted */
    uint16_t watch_off;
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
    struct rt_page *pg;       /* the runtime's own state of each page, beside the engine's `pages` */
    uint64_t waiting_remote;  /* pages with remote set: replies we expect soon */
    /* Sequential-run detection for cfg.prefetch (run_prefetch in runtime.c):
     * pages [run_lo, run_next) were asked for ahead of the vCPU. */
    uint64_t run_lo, run_next;
    unsigned window;
    struct predictor pred;    /* cfg.migratory: hint read faults write-soon (predict.c) */
    uint64_t answer_soon;     /* peers sent a request/INVALIDATE since the last epoll_wait */
    /* The hold window (cfg.hold_us) is the engine's IVY_HOLDING state; the
     * runtime keeps its clock: HOLD sets a page's hold_until, and the engine is
     * told once it has passed (or the writer stored) while a request waits. */
    uint64_t hold_ns;
    uint64_t done_ns;         /* when the last local fault completed (DONE) */
    uint64_t *held_pages;     /* holding pages with requests parked: looked at when the loop wakes */
    size_t nheld, held_cap;
    struct fifo fifo;
    uint64_t pass_peers;      /* peers sent to since the last link_end_pass: their batches wait (cfg.batch) */
    struct conn conns[IVY_MAX_NODES];
    int uffd, epfd, stopfd, timerfd, failfd;
    pthread_t thread;
    bool started, stopped, registered;
    bool leaving;             /* clean stop in progress: send errors no longer matter */
    volatile int failed;
    struct ivy_rt_failure failure;
    struct ivy_rt_stats stats;
    struct ivy_trace *trace;  /* NULL: tracing off (trace.c) */
    struct vcpu_slot vcpu_slots[IVY_RT_MAX_VCPUS];
    unsigned vcpu_claims, nvcpu_slots;  /* slots claimed, slots published (probe.c) */
    /* Test kit only (ivy_test_drop_sends): the next `test_drops` messages of
     * type test_drop_type are not sent, as if lost by a buggy engine. */
    uint8_t test_drop_type;
    uint32_t test_drops;
    uint64_t test_dropped_page;         /* page + 1 of the last message dropped; 0: none */
#ifdef IVY_PROFILE
    uint64_t *prof;           /* (ns << 4 | event) per step */
    size_t nprof;
#endif
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

/*
 * Build with -DIVY_PROFILE (IVY_CFLAGS=-DIVY_PROFILE pip install ...) to log a
 * timestamp at each step of the event loop; stop() writes them to
 * /tmp/ivy-prof-<pid>-<node>.txt. Used to find where a fault's time goes.
 */
enum prof_event { PROF_EPOLL_IN, PROF_EPOLL_OUT, PROF_UFFD_READ, PROF_SENT, PROF_RECV, PROF_GRANTED,
                  PROF_ZAPPED, PROF_WRPROTECTED, PROF_NEVENTS };
#ifdef IVY_PROFILE
#define PROF_CAP (1u << 20)
void rt_prof(struct ivy_rt *rt, unsigned event);
#define PROF(rt, ev) rt_prof(rt, ev)
#else
#define PROF(rt, ev) ((void)0)
#endif

/* runtime.c */
/* Record the first failure (kind, the peer and page concerned or IVY_RT_NO_*, what refused or failed,
 * then the user's line), stop the loop and tell pollers. rt_fail: a system call failed here. */
void rt_fail_as(struct ivy_rt *rt, enum ivy_rt_fail_kind kind, uint16_t peer, uint64_t page, const char *what,
                const char *fmt, ...) __attribute__((format(printf, 6, 7)));
#define rt_fail(rt, ...) rt_fail_as(rt, IVY_FAIL_HOST, IVY_RT_NO_NODE, IVY_RT_NO_PAGE, "system call", __VA_ARGS__)
/* How many pages this node waits for (first: the first of them, and what for). */
uint64_t rt_awaited(const struct ivy_rt *rt, uint64_t *first, uint8_t *kind);
void rt_describe_wait(struct ivy_rt *rt, char *buf, size_t len);
const char *rt_type_name(uint8_t type);
void rt_handle_frame(struct ivy_rt *rt, struct conn *c, const struct ivy_wire_frame *f);

/* runtime.c */
void *rt_event_loop(void *arg);
void rt_release_faulters(struct ivy_rt *rt);

/* rt_uffd.c: the guest's view of one page (event-loop thread only) */
static inline uint8_t *rt_guest_page(const struct ivy_rt *rt, uint64_t page)
{
    return (uint8_t *)(uintptr_t)(rt->cfg.guest_addr + page * IVY_PAGE_SIZE);
}
void rt_grant(struct ivy_rt *rt, uint64_t page, bool rw, bool force_continue);
void rt_zap(struct ivy_rt *rt, uint64_t page);
void rt_wrprotect(struct ivy_rt *rt, uint64_t page);
void rt_wake_spurious(struct ivy_rt *rt, uint64_t page, bool minor);

/* probe.c */
void probe_fault_read(struct ivy_rt *rt, uint64_t page, uint32_t tid, uint64_t now);
void probe_fault_end(struct ivy_rt *rt, uint64_t page, uint64_t now);
void probe_all_released(struct ivy_rt *rt);
void probe_message(struct page_msg *record, uint8_t type, uint16_t peer);
bool probe_test_drop(struct ivy_rt *rt, const struct ivy_action *a);

/* predict.c: a read fault asks pred_hint() first, then reports what the engine did with it
 * (pending before the call); a write fault, and a hinted read's grant (MAP_RO or MAP_RW), report too. */
bool pred_hint(struct ivy_rt *rt);
void pred_read_fault(struct ivy_rt *rt, uint64_t page, uint8_t pending_before, uint16_t off);
void pred_write_fault(struct ivy_rt *rt, uint64_t page);
void pred_granted(struct ivy_rt *rt, uint64_t page, bool writable);

/* link.c */
void link_send(struct ivy_rt *rt, struct conn *c, uint8_t type, const struct ivy_msg *m, const uint8_t *data);
void link_flush(struct ivy_rt *rt, struct conn *c);
void link_end_pass(struct ivy_rt *rt);
void link_read(struct ivy_rt *rt, struct conn *c);
void link_close(struct ivy_rt *rt, struct conn *c);
void link_heartbeat(struct ivy_rt *rt);
void link_say_bye(struct ivy_rt *rt);
int link_init_keys(struct conn *c, const uint8_t *send_key, const uint8_t *recv_key);
void link_free_keys(struct conn *c);

#endif
