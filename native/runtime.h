/*
 * runtime.h - one DSM node: userfaultfd fault path, peer links, engine driver.
 *
 * A node is one event-loop thread that owns the engine, every per-page table
 * and every file descriptor below. Python creates it with connected,
 * authenticated sockets (one per peer), optionally declares pre-loaded pages,
 * starts it, reads statistics at any time and stops it. Nothing here blocks on
 * anything but epoll_wait, so serving one page never waits for another.
 */
#ifndef IVY_RUNTIME_H
#define IVY_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "aead.h"
#include "engine.h"
#include "wire.h"

#define IVY_RT_LAT_BUCKETS 48 /* bucket i counts latencies in [2^i, 2^(i+1)) ns */
#define IVY_RT_NTYPES (IVY_WIRE_TYPE_MAX + 1) /* counters indexed by wire type (engine messages, PING, BYE) */
#define IVY_RT_ERR_LEN 256
/* Link liveness when the config gives 0; the control channel (hypervisor/node.py) uses the same. */
#define IVY_RT_HEARTBEAT_MS 250  /* PING period per link */
#define IVY_RT_TIMEOUT_MS 2000   /* a peer silent this long fails the node */
#define IVY_RT_PREFETCH_MAX 32 /* pages one sequential read fault may ask for ahead of the vCPU */
#define IVY_RT_MAX_VCPUS 64   /* vCPU threads one node can register */
/* With ivy_rt_config.batch: a peer's later frames of one pass of the event loop wait in its
 * output queue until the pass ends, or until this many bytes wait: two page replies, so a reply
 * of a prefetch window waits for one more seal, a window's READs leave in one send. The best of
 * 4-128 KiB measured (docs/dsm.md, "Batching"; bench/batch.py). */
#define IVY_RT_BATCH_BYTES (8u * 1024u)
#define IVY_RT_BATCH_MAX_BYTES (1u << 20)

/* This host's TSC, read in the calling thread: the join's clock probes
 * (hypervisor/tscsync.py) estimate how far each host's TSC is from node 0's. */
static inline uint64_t ivy_host_tsc(void) {
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

struct ivy_rt_config {
    uint16_t self;
    uint16_t nnodes;
    uint8_t read_ownership; /* enum ivy_read_ownership */
    uint8_t manager;        /* enum ivy_manager */
    uint8_t migratory;      /* bool: migratory pages (ivy_config.migratory; GiantVM reads only) */
    uint8_t first_touch;    /* enum ivy_first_touch: what node 0's first read of an untouched page gets */
    uint8_t prefetch;       /* bool: a read fault continuing a sequential run asks for the pages after it
                               (ivy_config.prefetch; classic Ivy reads only; node-local) */
    int memfd;              /* backs both views; kept open by the caller */
    uint64_t guest_addr;    /* MAP_SHARED view the guest (and KVM) touches */
    uint64_t vmm_addr;      /* MAP_SHARED view the runtime reads and writes */
    uint64_t size;          /* bytes, a multiple of IVY_PAGE_SIZE */
    int peer_fds[IVY_MAX_NODES]; /* connected socket per peer, -1 for self; the runtime owns them */
    uint32_t heartbeat_ms;  /* PING period per link (0: IVY_RT_HEARTBEAT_MS) */
    uint32_t timeout_ms;    /* a peer silent this long fails the node (0: IVY_RT_TIMEOUT_MS) */
    uint32_t poll_us;       /* busy-poll this long for an expected reply before sleeping (0: never) */
    uint32_t hold_us;       /* after a local fault on a page completes, requests that could take the
                               page away wait this long (Mirage's delta; 0: serve at once) */
    uint32_t trace_records; /* keep a trace ring of this many records (trace.h); 0: tracing off */
    /* Per peer, from that link's handshake (hypervisor/handshake.py): the key sealing what this
     * node sends, and the one opening what it receives, IVY_AEAD_KEY_SIZE bytes from
     * offset peer * IVY_AEAD_KEY_SIZE. An all-zero key is refused. */
    uint8_t send_keys[IVY_MAX_NODES * IVY_AEAD_KEY_SIZE];
    uint8_t recv_keys[IVY_MAX_NODES * IVY_AEAD_KEY_SIZE];
    uint8_t insecure_plaintext; /* frames travel unsealed: the benchmark's baseline only, never a user's */
    uint8_t map_owned;      /* node 0: map every page it owns at start, writable, in large ranges, so a
                               first touch of a page nobody else has touched takes no userfaultfd fault */
    uint8_t fifo_priority;  /* 1..99: the event-loop thread runs SCHED_FIFO at this priority, so a message
                               preempts a vCPU spinning on its CPU (needs root); 0: the default policy */
    uint8_t batch;          /* bool: a peer's second and later frames of one event-loop pass leave together
                               at the pass's end (or at batch_bytes), one send() for many (link.c; node-local) */
    uint32_t batch_bytes;   /* with batch: send once this many bytes wait (0: IVY_RT_BATCH_BYTES) */
};

/*
 * Plain counters written only by the event-loop thread. Readers in other
 * threads may see a counter one update stale; every field is an aligned
 * 64-bit word, so no read is torn on x86-64.
 */
struct ivy_rt_stats {
    uint64_t faults_read;     /* userfaultfd MINOR faults for a read */
    uint64_t faults_write;    /* MINOR faults for a write */
    uint64_t faults_wp;       /* write-protect faults */
    uint64_t faults_spurious; /* faults the engine answered with WAKE */
    uint64_t faults_local;    /* completed without a message */
    uint64_t faults_remote;   /* completed after a request to a peer */
    uint64_t faults_duplicate; /* arrived while the page was already being acquired */
    uint64_t msgs_sent[IVY_RT_NTYPES];
    uint64_t msgs_recv[IVY_RT_NTYPES];
    uint64_t bytes_sent[IVY_RT_NTYPES];
    uint64_t bytes_recv[IVY_RT_NTYPES];
    uint64_t forwards;        /* requests this node passed on to another node */
    uint64_t reply_hops;      /* sum of `hops` over replies received */
    uint64_t replies_data;    /* replies received carrying page bytes */
    uint64_t replies_elided;  /* replies received without bytes (versions matched) */
    uint64_t parked;
    uint64_t unparked;
    uint64_t held;            /* requests deferred by the hold window after a local grant */
    uint64_t holds_cut;       /* windows ended early by the woken writer's store */
    uint64_t zaps;
    uint64_t wrprotects;
    uint64_t continues;
    uint64_t wp_clears;
    uint64_t wakes;
    uint64_t eexist;          /* grants that found the page already mapped */
    uint64_t sends_queued;    /* frames the kernel did not take at once (output queue used) */
    uint64_t sends;           /* send()/sendmsg() calls on the links: one per frame without batch */
    uint64_t batched;         /* frames that waited for their pass's end (or batch_bytes) to leave */
    uint64_t mapped_up_front; /* pages map_owned mapped at start */
    uint64_t prefetches;      /* pages asked for ahead of a sequential run (engine row prefetch_request) */
    uint64_t prefetched;      /* of those, installed before any fault on them */
    uint64_t hinted_reads;    /* READs sent flagged write-soon (cfg.migratory; predict.c) */
    uint64_t writable_grants; /* of those, granted writable (engine row reply_read_writable) */
    uint64_t hints_unused;    /* writable grants whose faulting word was not written by the next read */
    uint64_t lat_count;
    uint64_t lat_sum_ns;
    uint64_t lat_max_ns;
    uint64_t lat_hist[IVY_RT_LAT_BUCKETS];
};

/* Why a node stopped: callers decide on the kind, never on the text. */
enum ivy_rt_fail_kind {
    IVY_FAIL_NONE = 0,
    IVY_FAIL_PEER_LOST = 1,    /* a peer went silent, closed without BYE, or its socket failed */
    IVY_FAIL_PEER_LEFT = 2,    /* a peer left cleanly (BYE) while this node still needed it */
    IVY_FAIL_PEER_GARBAGE = 3, /* a peer sent bytes the wire decoder refuses, or claimed another id */
    IVY_FAIL_PROTOCOL = 4,     /* an authenticated peer's well-formed message that the engine refuses
                                  for the page's state: a bug in ivyvm's protocol, not a cluster fault */
    IVY_FAIL_ENGINE = 5,       /* the engine asked for an impossible action: a bug in ivyvm */
    IVY_FAIL_HOST = 6          /* a system call failed here (userfaultfd, epoll, threads) */
};

#define IVY_RT_NO_NODE 0xFFFFu
#define IVY_RT_NO_PAGE 0xFFFFFFFFFFFFFFFFull
#define IVY_RT_WHAT_LEN 64

/* The first failure, written once by the failing thread before `failed` is published. */
struct ivy_rt_failure {
    uint8_t kind;           /* enum ivy_rt_fail_kind */
    uint8_t awaited_kind;   /* enum ivy_pending of the first awaited page (IVY_IDLE: none awaited) */
    uint16_t peer;          /* the node concerned, or IVY_RT_NO_NODE */
    uint32_t reserved;
    uint64_t page;          /* the page concerned, or IVY_RT_NO_PAGE */
    uint64_t awaited;       /* how many pages this node was waiting for when it failed */
    uint64_t awaited_page;  /* the first of them */
    char what[IVY_RT_WHAT_LEN]; /* the check or transition that refused, or the call that failed */
    char text[IVY_RT_ERR_LEN];  /* the whole story in one line, for the user */
};

struct ivy_rt;

/* Validate cfg, open and register userfaultfd, populate the page cache.
 * NULL on failure with a one-line reason in err. */
struct ivy_rt *ivy_rt_create(const struct ivy_rt_config *cfg, char *err, size_t errlen);
/* Declare bytes written before start (node 0's image): version >= 1. 0 or -1. */
int ivy_rt_set_version(struct ivy_rt *rt, uint64_t page, uint64_t version);
/* Start the event-loop thread. 0 or -1 (reason in ivy_rt_error). */
int ivy_rt_start(struct ivy_rt *rt);
/* Say BYE, stop and join the thread, wake every blocked faulter, close fds. */
void ivy_rt_stop(struct ivy_rt *rt);
/* Stop if needed and free everything. */
void ivy_rt_destroy(struct ivy_rt *rt);

const struct ivy_rt_stats *ivy_rt_stats(const struct ivy_rt *rt);
/* The first error that stopped the node, or NULL while healthy: as a struct, and its text. */
const struct ivy_rt_failure *ivy_rt_failure(const struct ivy_rt *rt);
const char *ivy_rt_error(const struct ivy_rt *rt);
/* An eventfd that becomes readable when the node fails (poll it). */
int ivy_rt_failure_fd(const struct ivy_rt *rt);
/* The n pages that faulted most, most first; returns how many were filled. */
unsigned ivy_rt_top_pages(const struct ivy_rt *rt, uint64_t *pages, uint32_t *counts, unsigned n);
/* Engine access right now (0 none, 1 read, 2 write); racy, for tests. */
int ivy_rt_access(const struct ivy_rt *rt, uint64_t page);

/* ---- probes (probe.c): the profile's and the watchdog's view ----------- */

/* One vCPU thread's time blocked in page faults (QEMU's postcopy blocktime). */
struct ivy_rt_vcpu_info {
    uint16_t vcpu;
    uint32_t tid;         /* the thread id it registered */
    uint8_t waiting;      /* blocked in a fault right now (page, waiting_ns) */
    uint64_t faults;      /* faults read from userfaultfd for this thread */
    uint64_t blocked_ns;  /* completed waits, fault read to grant */
    uint64_t max_ns;      /* the longest completed wait */
    uint64_t page;
    uint64_t waiting_ns;
};

/* A fault outstanding now: vcpu -1 when no registered vCPU raised it. */
struct ivy_rt_stall {
    uint64_t page;
    uint64_t age_ns;
    uint32_t tid;
    int32_t vcpu;
};

/* The engine's entry for a page and what last travelled for it. */
struct ivy_rt_page_info {
    uint8_t state, owner, pending, access, mapped, parked, held;
    uint16_t probowner;
    uint64_t copyset, version, acks_missing;
    uint64_t fault_age_ns;   /* a local fault waits on it since (0: none) */
    uint8_t sent_type;       /* last message sent for it (0: none) */
    uint16_t sent_peer;
    uint64_t sent_age_ns;
    uint8_t recv_type;       /* last message received for it (0: none) */
    uint16_t recv_peer;
    uint64_t recv_age_ns;
};

/* Any thread, before it touches guest RAM: faults of thread `tid` are vCPU `vcpu`'s. 0 or -1 (full). */
int ivy_rt_register_vcpu(struct ivy_rt *rt, uint16_t vcpu, uint32_t tid);
/* Registered vCPUs in registration order; returns how many were filled. */
unsigned ivy_rt_vcpus(const struct ivy_rt *rt, struct ivy_rt_vcpu_info *out, unsigned n);
/* Faults outstanding for at least min_age_ns: vCPUs' first, then other threads' pages. */
unsigned ivy_rt_outstanding(const struct ivy_rt *rt, struct ivy_rt_stall *out, unsigned n, uint64_t min_age_ns);
/* A racy snapshot of one page, for diagnostics. 0, or -1 beyond RAM. */
int ivy_rt_page_info(const struct ivy_rt *rt, uint64_t page, struct ivy_rt_page_info *out);

#endif
