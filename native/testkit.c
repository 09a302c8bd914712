/*
 * testkit.c - helpers for tests and the benchmark, called through cffi.
 *
 * cffi releases the GIL around every call, so Python threads calling these
 * touch the guest view concurrently, from C, exactly as vCPU threads would;
 * a thread blocked in a userfaultfd fault holds no Python lock.
 */
#define _GNU_SOURCE
#include "testkit.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "aead.h"
#include "rt_internal.h" /* the lost-message hook below sets two fields of a node */
#include "wire.h"


uint64_t ivy_test_atomic_add(uint64_t addr, uint64_t delta, uint64_t count)
{
    uint64_t *p = (uint64_t *)(uintptr_t)addr, last = 0;
    for (uint64_t i = 0; i < count; i++)
        last = __atomic_add_fetch(p, delta, __ATOMIC_SEQ_CST);
    return last;
}

/*
 * Locked increments with the CPU given away after each one, as a vCPU taking
 * and dropping a lock between other work does: under contention nearly every
 * increment needs the page brought back, so a runtime that lets the page be
 * taken before the woken thread ran starves the thread.
 */
uint64_t ivy_test_atomic_add_yielding(uint64_t addr, uint64_t count)
{
    uint64_t *p = (uint64_t *)(uintptr_t)addr, last = 0;
    for (uint64_t i = 0; i < count; i++) {
        last = __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST);
        sched_yield();
    }
    return last;
}

uint64_t ivy_test_load64(uint64_t addr) { return __atomic_load_n((uint64_t *)(uintptr_t)addr, __ATOMIC_ACQUIRE); }

void ivy_test_store64(uint64_t addr, uint64_t value)
{
    __atomic_store_n((uint64_t *)(uintptr_t)addr, value, __ATOMIC_RELEASE);
}

static uint64_t pattern(uint64_t seed, uint64_t i) { return (seed * 0x9e3779b97f4a7c15ull) ^ (i * 0xbf58476d1ce4e5b9ull) ^ i; }

void ivy_test_fill(uint64_t addr, uint64_t len, uint64_t seed)
{
    uint64_t *p = (uint64_t *)(uintptr_t)addr;
    for (uint64_t i = 0; i < len / 8; i++)
        p[i] = pattern(seed, i);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

int64_t ivy_test_verify(uint64_t addr, uint64_t len, uint64_t seed)
{
    const uint64_t *p = (const uint64_t *)(uintptr_t)addr;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    for (uint64_t i = 0; i < len / 8; i++)
        if (p[i] != pattern(seed, i))
            return (int64_t)i;
    return -1;
}

int ivy_test_wait_value(uint64_t addr, uint64_t value, uint64_t timeout_ns)
{
    uint64_t deadline = now_ns() + timeout_ns;
    for (unsigned spins = 0;; spins++) {
        if (ivy_test_load64(addr) == value)
            return 0;
        if ((spins & 63) == 63) {
            if (now_ns() > deadline)
                return -1;
            sched_yield();
        }
    }
}

/* One access, timed: a plain load, or a plain store (a write fault, no read first). */
uint64_t ivy_test_touch_timed(uint64_t addr, int write)
{
    volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)addr;
    uint64_t t0 = now_ns();
    if (write)
        *p = t0;
    else
        (void)*p;
    return now_ns() - t0;
}

/*
 * Ownership ping-pong as a spinlock hand-off does it: node `self` (0 or 1)
 * waits for 2r+self with a locked cmpxchg (a write access, so each attempt
 * needs the page writable here) and replaces it with 2r+self+1. Each round
 * moves the page to this node once. out_ns[r]: time from the end of our
 * previous turn to the end of this one. 0, or -1 after timeout_ns idle.
 */
int ivy_test_pingpong(uint64_t addr, int self, uint64_t rounds, uint64_t *out_ns, uint64_t timeout_ns)
{
    uint64_t *p = (uint64_t *)(uintptr_t)addr, last = now_ns();
    for (uint64_t r = 0; r < rounds; r++) {
        uint64_t want = 2 * r + (uint64_t)self;
        for (unsigned spins = 0;; spins++) {
            uint64_t expected = want;
            if (__atomic_compare_exchange_n(p, &expected, want + 1, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
                break;
            /* Give the core to this node's event loop: on a 2-core host a pure
             * spinner starves the thread that must hand the page over. */
            sched_yield();
            if ((spins & 1023) == 1023 && now_ns() - last > timeout_ns)
                return -1;
        }
        uint64_t now = now_ns();
        out_ns[r] = now - last;
        last = now;
    }
    return 0;
}

/* ---- floors for the benchmark ------------------------------------------ */

/* Pages of the benchmarks: a memfd, its guest view registered with a
 * blocking userfaultfd, and a VMM view (already holding bytes, so every page
 * is in the page cache and the guest view's first touch is a MINOR fault). */
struct bench_region {
    int memfd, uffd;
    uint8_t *guest, *vmm;
    size_t size;
};

static int bench_region_open(struct bench_region *p, unsigned npages, uint64_t modes)
{
    size_t size = (size_t)npages * IVY_PAGE_SIZE;
    *p = (struct bench_region){-1, -1, MAP_FAILED, MAP_FAILED, size};
    p->memfd = memfd_create("ivy-bench", MFD_CLOEXEC);
    if (p->memfd < 0 || ftruncate(p->memfd, (off_t)size))
        return -1;
    p->guest = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, p->memfd, 0);
    p->vmm = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, p->memfd, 0);
    if (p->guest == MAP_FAILED || p->vmm == MAP_FAILED)
        return -1;
    for (size_t off = 0; off < size; off += IVY_PAGE_SIZE)
        p->vmm[off] = 1;
    p->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM};
    if (p->uffd < 0 || ioctl(p->uffd, UFFDIO_API, &api))
        return -1;
    struct uffdio_register reg = {{(uint64_t)(uintptr_t)p->guest, size}, modes, 0};
    return ioctl(p->uffd, UFFDIO_REGISTER, &reg) ? -1 : 0;
}

static void bench_region_close(struct bench_region *p)
{
    if (p->uffd >= 0)
        close(p->uffd);
    if (p->guest != MAP_FAILED)
        munmap(p->guest, p->size);
    if (p->vmm != MAP_FAILED)
        munmap(p->vmm, p->size);
    if (p->memfd >= 0)
        close(p->memfd);
}

/* n timed MINOR faults on the page, plus one untimed last fault raised with
 * *done set so the serving thread sees it and leaves; stops early once
 * *failed (if given) turns non-zero. */
static void timed_faults(struct bench_region *p, uint64_t n, uint64_t *out_ns, volatile int *done,
                         volatile int *failed)
{
    for (uint64_t i = 0; i <= n && !(failed && *failed); i++) {
        if (i == n)
            *done = 1;
        madvise(p->guest, IVY_PAGE_SIZE, MADV_DONTNEED);
        uint64_t t0 = now_ns();
        (void)*(volatile uint8_t *)p->guest;
        if (i < n)
            out_ns[i] = now_ns() - t0;
    }
}

struct floor_ctx {
    int uffd;
    volatile int done;
};

/* Sleeps in read() on a blocking userfaultfd: the cheapest wake-up there is
 * (a poll() before the read was measured 0.7 us slower per fault, which
 * would have flattered every ratio against this floor). */
static void *floor_server(void *arg)
{
    struct floor_ctx *f = arg;
    for (bool last = false; !last;) {
        struct uffd_msg m;
        if (read(f->uffd, &m, sizeof m) != sizeof m || m.event != UFFD_EVENT_PAGEFAULT)
            continue;
        /* Set before the final fault was raised, so read with it; checked
         * after serving instead, it could be seen one fault early. */
        last = f->done;
        struct uffdio_continue c = {{m.arg.pagefault.address & ~(uint64_t)(IVY_PAGE_SIZE - 1), IVY_PAGE_SIZE}, 0, 0};
        if (ioctl(f->uffd, UFFDIO_CONTINUE, &c)) {
            struct uffdio_range r = c.range;
            ioctl(f->uffd, UFFDIO_WAKE, &r);
        }
    }
    return NULL;
}

/* Bare MINOR fault round trip: zap, touch, a thread asleep in read() CONTINUEs. */
int ivy_bench_uffd_floor(uint64_t n, uint64_t *out_ns)
{
    struct bench_region p;
    struct floor_ctx f = {-1, 0};
    pthread_t t;
    int rc = -1;
    if (bench_region_open(&p, 1, UFFDIO_REGISTER_MODE_MINOR))
        goto out;
    f.uffd = p.uffd;
    if (pthread_create(&t, NULL, floor_server, &f))
        goto out;
    timed_faults(&p, n, out_ns, &f.done, NULL);
    pthread_join(t, NULL);
    rc = 0;
out:
    bench_region_close(&p);
    return rc;
}

static int full_io(int fd, void *buf, size_t len, bool send_it)
{
    size_t done = 0;
    while (done < len) {
        ssize_t r = send_it ? send(fd, (char *)buf + done, len - done, MSG_NOSIGNAL)
                            : recv(fd, (char *)buf + done, len - done, 0);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)r;
    }
    return 0;
}

/* Bare TCP round trip shaped like a read fault: a header out, a header and a page back. */
int ivy_bench_tcp_ping(int fd, uint64_t n, uint64_t *out_ns)
{
    char req[IVY_WIRE_HDR_SIZE] = {0}, rep[IVY_WIRE_MAX_FRAME];
    for (uint64_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        if (full_io(fd, req, sizeof req, true) || full_io(fd, rep, sizeof rep, false))
            return -1;
        out_ns[i] = now_ns() - t0;
    }
    return 0;
}

int ivy_bench_tcp_pong(int fd, uint64_t n)
{
    char req[IVY_WIRE_HDR_SIZE], rep[IVY_WIRE_MAX_FRAME];
    memset(rep, 0x5a, sizeof rep);
    for (uint64_t i = 0; i < n; i++)
        if (full_io(fd, req, sizeof req, false) || full_io(fd, rep, sizeof rep, true))
            return -1;
    return 0;
}

/*
 * The same round trip through the DSM loop's structure: non-blocking socket,
 * epoll_wait for readiness, then recv/send (ping waits for the answer in
 * epoll_wait, pong waits for the request there). Run next to the blocking
 * floor it shows what the event-loop structure itself costs.
 */
static int epoll_io(int ep, int fd, void *buf, size_t len, bool send_it)
{
    size_t done = 0;
    while (done < len) {
        ssize_t r = send_it ? send(fd, (char *)buf + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT)
                            : recv(fd, (char *)buf + done, len - done, MSG_DONTWAIT);
        if (r > 0) {
            done += (size_t)r;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR))
            return -1;
        struct epoll_event ev;
        if (epoll_wait(ep, &ev, 1, -1) < 0 && errno != EINTR)
            return -1;
    }
    return 0;
}

static int epoll_for(int fd)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    if (ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0)
        return ep;
    if (ep >= 0)
        close(ep);
    return -1;
}

int ivy_bench_tcp_ping_epoll(int fd, uint64_t n, uint64_t *out_ns)
{
    char req[IVY_WIRE_HDR_SIZE] = {0}, rep[IVY_WIRE_MAX_FRAME];
    int ep = epoll_for(fd), rc = 0;
    if (ep < 0)
        return -1;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        uint64_t t0 = now_ns();
        rc = epoll_io(ep, fd, req, sizeof req, true) || epoll_io(ep, fd, rep, sizeof rep, false) ? -1 : 0;
        out_ns[i] = now_ns() - t0;
    }
    close(ep);
    return rc;
}

int ivy_bench_tcp_pong_epoll(int fd, uint64_t n)
{
    char req[IVY_WIRE_HDR_SIZE], rep[IVY_WIRE_MAX_FRAME];
    int ep = epoll_for(fd), rc = 0;
    if (ep < 0)
        return -1;
    memset(rep, 0x5a, sizeof rep);
    for (uint64_t i = 0; i < n && rc == 0; i++)
        rc = epoll_io(ep, fd, req, sizeof req, false) || epoll_io(ep, fd, rep, sizeof rep, true) ? -1 : 0;
    close(ep);
    return rc;
}

/*
 * A design bound for the remote read fault, not a floor: the whole fault
 * path built from the bare mechanisms, with each side's waiting done by the
 * cheapest means there is. A handler thread sleeps in read() on a blocking
 * userfaultfd, sends a frame header and waits for the answer in a blocking recv()
 * (the thread that asked is the one the answer wakes); the owner process,
 * asleep in recv(), write-protects its mapped, written copy (as an owner must
 * before the bytes leave: a downgrade, so the TLB is flushed) and sends
 * a header and a page; the handler copies the page into the memfd and
 * CONTINUEs. No engine, one page, one peer: a node cannot be built like
 * this, since while it waits for one answer it serves nothing else. It shows
 * what any runtime on this host can hope for (docs/dsm.md, "What was measured").
 */
struct bound_ctx {
    int uffd, sock;
    uint8_t *vmm;
    uint64_t guest;
    volatile int done;
    int rc;
};

/* The handler cannot go on: let the timed thread's faults through unserved. */
static void *bound_fail(struct bound_ctx *b)
{
    struct uffdio_range r = {b->guest, IVY_PAGE_SIZE};
    b->rc = -1;
    ioctl(b->uffd, UFFDIO_UNREGISTER, &r);
    ioctl(b->uffd, UFFDIO_WAKE, &r);
    return NULL;
}

static void *bound_handler(void *arg)
{
    struct bound_ctx *b = arg;
    uint8_t req[IVY_WIRE_HDR_SIZE] = {0}, rep[IVY_WIRE_MAX_FRAME];
    for (bool last = false; !last;) {
        struct uffd_msg m;
        if (read(b->uffd, &m, sizeof m) != sizeof m) {
            if (errno == EINTR)
                continue;
            return bound_fail(b);
        }
        last = b->done; /* as in floor_server */
        if (full_io(b->sock, req, sizeof req, true) || full_io(b->sock, rep, sizeof rep, false))
            return bound_fail(b);
        memcpy(b->vmm, rep + sizeof req, IVY_PAGE_SIZE);
        struct uffdio_continue c = {{b->guest, IVY_PAGE_SIZE}, 0, 0};
        if (ioctl(b->uffd, UFFDIO_CONTINUE, &c)) {
            struct uffdio_range r = c.range;
            ioctl(b->uffd, UFFDIO_WAKE, &r);
        }
    }
    return NULL;
}

/* Requester side: n timed faults on one page; fd is connected to the owner. */
int ivy_bench_bound_fault(int fd, uint64_t n, uint64_t *out_ns)
{
    struct bench_region p;
    struct bound_ctx b = {-1, fd, NULL, 0, 0, 0};
    pthread_t t;
    int rc = -1;
    if (bench_region_open(&p, 1, UFFDIO_REGISTER_MODE_MINOR))
        goto out;
    b.uffd = p.uffd;
    b.vmm = p.vmm;
    b.guest = (uint64_t)(uintptr_t)p.guest;
    if (pthread_create(&t, NULL, bound_handler, &b))
        goto out;
    timed_faults(&p, n, out_ns, &b.done, &b.rc);
    pthread_join(t, NULL);
    rc = b.rc;
out:
    bench_region_close(&p);
    return rc;
}

/* Owner side: answer requests until the requester closes the connection.
 * Each request downgrades a different writable page, as the DSM's owner of
 * many written pages does; once all were sent, one ioctl and a store per
 * page make them writable and written again (amortised over the round). */
#define BOUND_OWNER_PAGES 256u

static int bound_owner_rearm(struct bench_region *p)
{
    struct uffdio_writeprotect wp = {{(uint64_t)(uintptr_t)p->guest, p->size}, 0};
    if (ioctl(p->uffd, UFFDIO_WRITEPROTECT, &wp))
        return -1;
    for (size_t off = 0; off < p->size; off += IVY_PAGE_SIZE)
        *(volatile uint8_t *)(p->guest + off) = 2;
    return 0;
}

int ivy_bench_bound_owner(int fd)
{
    struct bench_region p;
    uint8_t req[IVY_WIRE_HDR_SIZE], hdr[IVY_WIRE_HDR_SIZE] = {0};
    int rc = -1;
    if (bench_region_open(&p, BOUND_OWNER_PAGES, UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP))
        goto out;
    struct uffdio_continue c = {{(uint64_t)(uintptr_t)p.guest, p.size}, 0, 0};
    if (ioctl(p.uffd, UFFDIO_CONTINUE, &c) || bound_owner_rearm(&p))
        goto out;
    for (uint64_t i = 0; full_io(fd, req, sizeof req, false) == 0; i++) {
        size_t off = (size_t)(i % BOUND_OWNER_PAGES) * IVY_PAGE_SIZE;
        if (i && off == 0 && bound_owner_rearm(&p))
            goto out;
        struct uffdio_writeprotect wp = {{(uint64_t)(uintptr_t)(p.guest + off), IVY_PAGE_SIZE},
                                         UFFDIO_WRITEPROTECT_MODE_WP};
        if (ioctl(p.uffd, UFFDIO_WRITEPROTECT, &wp))
            goto out;
        struct iovec iov[2] = {{hdr, sizeof hdr}, {p.vmm + off, IVY_PAGE_SIZE}};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
        if (sendmsg(fd, &mh, MSG_NOSIGNAL) != (ssize_t)(sizeof hdr + IVY_PAGE_SIZE))
            goto out;
    }
    rc = 0;
out:
    bench_region_close(&p);
    return rc;
}

/*
 * What each step a remote fault cannot skip costs on this host, timed alone
 * on distinct pages (the DSM's faults touch many): the owner's downgrade of a
 * written page before its bytes leave (a TLB flush), the upgrade, the zap of
 * a write fault, the requester's CONTINUE, and the 4 KiB copy into the VMM
 * view. The floors contain none of them; docs/dsm.md adds them up.
 */
int ivy_bench_mechanisms(unsigned npages, uint64_t *out_ns)
{
    static uint8_t src[IVY_PAGE_SIZE];
    struct bench_region p;
    int rc = -1;
    if (!npages)
        return -1;
    if (bench_region_open(&p, npages, UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP))
        goto out;
    struct uffdio_continue all = {{(uint64_t)(uintptr_t)p.guest, p.size}, 0, 0};
    if (ioctl(p.uffd, UFFDIO_CONTINUE, &all))
        goto out;
    for (size_t off = 0; off < p.size; off += IVY_PAGE_SIZE)
        *(volatile uint8_t *)(p.guest + off) = 2; /* written: the downgrade must flush */
    for (unsigned k = 0; k < IVY_MECH_COUNT; k++) {
        for (unsigned i = 0; i < npages; i++) {
            uint8_t *guest = p.guest + (size_t)i * IVY_PAGE_SIZE;
            struct uffdio_writeprotect wp = {{(uint64_t)(uintptr_t)guest, IVY_PAGE_SIZE},
                                             k == IVY_MECH_WP_SET ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
            struct uffdio_continue c = {{(uint64_t)(uintptr_t)guest, IVY_PAGE_SIZE}, 0, 0};
            uint64_t t0 = now_ns();
            int r = 0;
            if (k == IVY_MECH_WP_SET || k == IVY_MECH_WP_CLEAR)
                r = ioctl(p.uffd, UFFDIO_WRITEPROTECT, &wp);
            else if (k == IVY_MECH_ZAP)
                r = madvise(guest, IVY_PAGE_SIZE, MADV_DONTNEED);
            else if (k == IVY_MECH_CONTINUE)
                r = ioctl(p.uffd, UFFDIO_CONTINUE, &c);
            else
                memcpy(p.vmm + (size_t)i * IVY_PAGE_SIZE, src, IVY_PAGE_SIZE);
            out_ns[(size_t)k * npages + i] = now_ns() - t0;
            if (r)
                goto out;
        }
    }
    rc = 0;
out:
    bench_region_close(&p);
    return rc;
}

/* ---- a lost message, for the watchdog's tests ---------------------------
 * The next `count` DSM messages of `type` this node's engine sends are
 * dropped (the engine's state moves on as if they went out), so a peer's
 * fault is never answered. Set before the node serves anything (the event
 * loop reads the fields unlocked). `node` is the address of a struct ivy_rt
 * of hypervisor._ivy_native (this module is built apart from it). */
int ivy_test_drop_sends(uintptr_t node, uint8_t type, uint32_t count)
{
    struct ivy_rt *rt = (struct ivy_rt *)node;
    if (type < IVY_MSG_READ || type > IVY_MSG_TYPE_MAX)
        return -1;
    rt->test_drop_type = type;
    __atomic_store_n(&rt->test_drops, count, __ATOMIC_RELEASE);
    return 0;
}

/* page + 1 of the last message dropped; 0 while none was. */
uint64_t ivy_test_dropped_page(uintptr_t node)
{
    const struct ivy_rt *rt = (const struct ivy_rt *)node;
    return __atomic_load_n(&rt->test_dropped_page, __ATOMIC_ACQUIRE);
}

/* One record sealed and opened in turn; the gap before each call lets the CPU go idle, so the
 * figures are the ones a fault pays, not a hot loop's. */
int ivy_bench_crypto(unsigned n, uint64_t gap_ns, uint64_t *out_ns)
{
    static uint8_t hdr[IVY_WIRE_HDR_SIZE], page[IVY_PAGE_SIZE], rec[IVY_WIRE_MAX_FRAME + IVY_SEAL_OVERHEAD];
    uint8_t key[IVY_AEAD_KEY_SIZE] = {7};
    struct ivy_aead *tx = ivy_aead_new(key, 1), *rx = ivy_aead_new(key, 0);
    struct timespec gap = {0, (long)gap_ns};
    int rc = tx && rx ? 0 : -1;
    memset(page, 0x5a, sizeof page);
    for (unsigned i = 0; i < n && !rc; i++) {
        for (unsigned k = 0; k < IVY_CRYPTO_COUNT && !rc; k++) {
            const uint8_t *data = k < IVY_CRYPTO_SEAL_HDR ? page : NULL;
            nanosleep(&gap, NULL);
            uint64_t t0 = now_ns();
            if (k == IVY_CRYPTO_SEAL_PAGE || k == IVY_CRYPTO_SEAL_HDR)
                rc = ivy_aead_seal2(tx, hdr, sizeof hdr, data, data ? IVY_PAGE_SIZE : 0, rec);
            else
                rc = ivy_aead_open(rx, rec);
            out_ns[(size_t)k * n + i] = now_ns() - t0;
        }
    }
    ivy_aead_free(tx);
    ivy_aead_free(rx);
    return rc;
}
