/*
 * rt_lifecycle.c - a DSM node's life: create (userfaultfd, epoll, timers,
 * the engine), start (maps what node 0 owns up front, starts the event-loop
 * thread), stop and destroy, and the read-only views the control plane polls
 * (statistics, failure, top pages, a page's access).
 */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static int setup_uffd(struct ivy_rt *rt, char *err, size_t errlen)
{
    rt->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (rt->uffd < 0) {
        int fd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            rt->uffd = ioctl(fd, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
            close(fd);
        }
    }
    if (rt->uffd < 0) {
        snprintf(err, errlen, "userfaultfd: %s (needs root or vm.unprivileged_userfaultfd=1)", strerror(errno));
        return -1;
    }
    struct uffdio_api api = {.api = UFFD_API,
                             .features = UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
                                         UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EXACT_ADDRESS |
                                         UFFD_FEATURE_THREAD_ID /* ties a fault to its vCPU (trace, profile) */};
    if (ioctl(rt->uffd, UFFDIO_API, &api)) {
        snprintf(err, errlen, "UFFDIO_API with MINOR_SHMEM|WP_SHMEM|EXACT_ADDRESS|THREAD_ID: %s (kernel too old?)",
                 strerror(errno));
        return -1;
    }
    /* Drop any mapping made before we manage the view, so every page starts faulting. */
    if (madvise((void *)(uintptr_t)rt->cfg.guest_addr, rt->cfg.size, MADV_DONTNEED)) {
        snprintf(err, errlen, "MADV_DONTNEED on the guest view: %s", strerror(errno));
        return -1;
    }
    /* Every page in the page cache, so a first touch is a MINOR fault, never MISSING. */
    if (madvise((void *)(uintptr_t)rt->cfg.vmm_addr, rt->cfg.size, MADV_POPULATE_WRITE)) {
        snprintf(err, errlen, "MADV_POPULATE_WRITE on the VMM view: %s", strerror(errno));
        return -1;
    }
    struct uffdio_register reg = {{rt->cfg.guest_addr, rt->cfg.size},
                                  UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP, 0};
    if (ioctl(rt->uffd, UFFDIO_REGISTER, &reg)) {
        snprintf(err, errlen, "UFFDIO_REGISTER MINOR|WP on the guest view (0x%llx, %llu bytes): %s",
                 (unsigned long long)rt->cfg.guest_addr, (unsigned long long)rt->cfg.size, strerror(errno));
        return -1;
    }
    rt->registered = true;
    if (!(reg.ioctls & (1ull << _UFFDIO_CONTINUE)) || !(reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT))) {
        snprintf(err, errlen, "the guest view does not support UFFDIO_CONTINUE and UFFDIO_WRITEPROTECT "
                              "(is it a MAP_SHARED memfd view?)");
        return -1;
    }
    return 0;
}

static int setup_loop(struct ivy_rt *rt, char *err, size_t errlen)
{
    rt->epfd = epoll_create1(EPOLL_CLOEXEC);
    rt->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    rt->failfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    rt->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (rt->epfd < 0 || rt->stopfd < 0 || rt->failfd < 0 || rt->timerfd < 0) {
        snprintf(err, errlen, "creating epoll/eventfd/timerfd: %s", strerror(errno));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN};
    const struct { int fd; uint64_t tag; const char *name; } own[] = {
        {rt->uffd, EP_UFFD, "userfaultfd"}, {rt->stopfd, EP_STOP, "stop eventfd"}, {rt->timerfd, EP_TIMER, "timerfd"}};
    for (unsigned i = 0; i < sizeof own / sizeof own[0]; i++) {
        ev.data.u64 = own[i].tag;
        if (epoll_ctl(rt->epfd, EPOLL_CTL_ADD, own[i].fd, &ev)) {
            snprintf(err, errlen, "epoll_ctl adding the %s: %s", own[i].name, strerror(errno));
            return -1;
        }
    }
    for (unsigned i = 0; i < rt->cfg.nnodes; i++) {
        struct conn *c = &rt->conns[i];
        if (c->fd < 0)
            continue;
        int one = 1, flags = fcntl(c->fd, F_GETFL);
        /* A link that cannot be made non-blocking would stall the whole loop; one without
         * TCP_NODELAY (not TCP, e.g. a socketpair in the tests) only loses latency. */
        if (flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK)) {
            snprintf(err, errlen, "making the link to node %u (fd %d) non-blocking: %s", i, c->fd, strerror(errno));
            return -1;
        }
        if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) && errno != EOPNOTSUPP &&
            errno != ENOPROTOOPT) {
            snprintf(err, errlen, "TCP_NODELAY on the link to node %u (fd %d): %s", i, c->fd, strerror(errno));
            return -1;
        }
        c->in = malloc(IN_CAP);
        if (!c->in) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        ev.data.u64 = i;
        if (epoll_ctl(rt->epfd, EPOLL_CTL_ADD, c->fd, &ev)) {
            snprintf(err, errlen, "epoll_ctl on the link to node %u (fd %d): %s", i, c->fd, strerror(errno));
            return -1;
        }
    }
    return 0;
}

struct ivy_rt *ivy_rt_create(const struct ivy_rt_config *cfg, char *err, size_t errlen)
{
    if (cfg->nnodes == 0 || cfg->nnodes > IVY_MAX_NODES || cfg->self >= cfg->nnodes) {
        snprintf(err, errlen, "node %u of %u: need 1 <= nnodes <= %u and self < nnodes", cfg->self,
                 cfg->nnodes, IVY_MAX_NODES);
        return NULL;
    }
    if (!cfg->size || cfg->size % IVY_PAGE_SIZE || cfg->guest_addr % IVY_PAGE_SIZE ||
        cfg->vmm_addr % IVY_PAGE_SIZE) {
        snprintf(err, errlen, "RAM size 0x%llx and both views must be non-empty and page aligned",
                 (unsigned long long)cfg->size);
        return NULL;
    }
    if (cfg->hold_us > 1000000u) {
        snprintf(err, errlen, "hold_us %u: the hold window must be at most 1000000 us", cfg->hold_us);
        return NULL;
    }
    if (cfg->read_ownership > IVY_READ_IVY || cfg->manager > IVY_MGR_FIXED) {
        snprintf(err, errlen, "read_ownership %u / manager %u out of range", cfg->read_ownership, cfg->manager);
        return NULL;
    }
    if (cfg->first_touch > IVY_TOUCH_WRITE) {
        snprintf(err, errlen, "first_touch %u out of range", cfg->first_touch);
        return NULL;
    }
    if (cfg->prefetch > 1 || (cfg->prefetch && cfg->read_ownership != IVY_READ_IVY)) {
        snprintf(err, errlen, "prefetch %u: a flag, and only with ivy reads", cfg->prefetch);
        return NULL;
    }
    if (cfg->migratory > 1 || (cfg->migratory && cfg->read_ownership != IVY_READ_GIANTVM)) {
        snprintf(err, errlen, "migratory %u: a flag, and only with giantvm reads", cfg->migratory);
        return NULL;
    }
    if (cfg->batch > 1 || cfg->batch_bytes > IVY_RT_BATCH_MAX_BYTES) {
        snprintf(err, errlen, "batch %u / batch_bytes %u: a flag, and at most %u bytes", cfg->batch,
                 cfg->batch_bytes, IVY_RT_BATCH_MAX_BYTES);
        return NULL;
    }
    for (unsigned i = 0; i < cfg->nnodes; i++) {
        if ((i == cfg->self) != (cfg->peer_fds[i] < 0)) {
            snprintf(err, errlen, "node %u: a socket is needed for every peer and none for self (peer %u fd %d)",
                     cfg->self, i, cfg->peer_fds[i]);
            return NULL;
        }
    }
    for (unsigned i = 0; i < cfg->nnodes && !cfg->insecure_plaintext; i++) {
        static const uint8_t zero[IVY_AEAD_KEY_SIZE];
        if (i != cfg->self && (!memcmp(cfg->send_keys + i * IVY_AEAD_KEY_SIZE, zero, sizeof zero) ||
                               !memcmp(cfg->recv_keys + i * IVY_AEAD_KEY_SIZE, zero, sizeof zero))) {
            snprintf(err, errlen, "node %u: no link keys for peer %u (every link is sealed)", cfg->self, i);
            return NULL;
        }
    }
    struct ivy_rt *rt = calloc(1, sizeof *rt);
    if (!rt) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    rt->cfg = *cfg;
    if (!rt->cfg.heartbeat_ms)
        rt->cfg.heartbeat_ms = IVY_RT_HEARTBEAT_MS;
    if (!rt->cfg.timeout_ms)
        rt->cfg.timeout_ms = IVY_RT_TIMEOUT_MS;
    if (!rt->cfg.batch_bytes)
        rt->cfg.batch_bytes = IVY_RT_BATCH_BYTES;
    rt->uffd = rt->epfd = rt->stopfd = rt->timerfd = rt->failfd = -1;
    rt->npages = cfg->size / IVY_PAGE_SIZE;
    for (unsigned i = 0; i < IVY_MAX_NODES; i++) {
        rt->conns[i].fd = i < cfg->nnodes ? cfg->peer_fds[i] : -1;
        rt->conns[i].peer = (uint16_t)i;
    }
    for (unsigned i = 0; i < cfg->nnodes && !cfg->insecure_plaintext; i++) {
        if (i != cfg->self && link_init_keys(&rt->conns[i], cfg->send_keys + i * IVY_AEAD_KEY_SIZE,
                                             cfg->recv_keys + i * IVY_AEAD_KEY_SIZE)) {
            snprintf(err, errlen, "node %u: libcrypto could not set up AES-256-GCM", cfg->self);
            ivy_rt_destroy(rt);
            return NULL;
        }
    }
    rt->pages = calloc(rt->npages, sizeof *rt->pages);
    rt->pg = calloc(rt->npages, sizeof *rt->pg);
    rt->hold_ns = (uint64_t)cfg->hold_us * 1000u;
    for (uint64_t p = 0; rt->pg && p < rt->npages; p++)
        rt->pg[p].write_off = rt->pg[p].watch_off = rt->pg[p].hint_off = NO_WATCH;
    if (!rt->pages || !rt->pg) {
        snprintf(err, errlen, "out of memory for %llu pages", (unsigned long long)rt->npages);
        ivy_rt_destroy(rt);
        return NULL;
    }
    struct ivy_config ec = {.self = cfg->self, .nnodes = cfg->nnodes, .read_ownership = cfg->read_ownership,
                            .manager = cfg->manager, .hold = cfg->hold_us != 0,
                            .migratory = cfg->migratory, .first_touch = cfg->first_touch,
                            .prefetch = cfg->prefetch,
                            .npages = rt->npages};
    ivy_engine_init(&rt->engine, &ec, rt->pages);
    if (trace_create(rt, err, errlen) || setup_uffd(rt, err, errlen) || setup_loop(rt, err, errlen)) {
        ivy_rt_destroy(rt);
        return NULL;
    }
    return rt;
}

int ivy_rt_set_version(struct ivy_rt *rt, uint64_t page, uint64_t version)
{
    if (rt->started || page >= rt->npages || version == 0)
        return -1;
    ivy_engine_set_version(&rt->engine, page, version);
    return 0;
}

/*
 * Map pages [first, first + n) writable with one UFFDIO_CONTINUE. The kernel
 * may stop part-way (a signal, the mm changing): go on from where it
 * stopped; a page found mapped (EEXIST) is granted alone, as a fault would.
 */
static int map_range(struct ivy_rt *rt, uint64_t first, uint64_t n)
{
    while (n && !rt->failed) {
        struct uffdio_continue c = {{(uint64_t)(uintptr_t)rt_guest_page(rt, first), n * IVY_PAGE_SIZE}, 0, 0};
        int r = ioctl(rt->uffd, UFFDIO_CONTINUE, &c) ? -errno : 0;
        rt->stats.continues++;
        uint64_t done = r == 0 ? n : c.mapped > 0 ? (uint64_t)c.mapped / IVY_PAGE_SIZE : 0;
        for (uint64_t p = first; p < first + done; p++)
            rt->pg[p].mapped = MAP_RW;
        first += done;
        n -= done;
        if (r == -EEXIST && done == 0) {
            rt_grant(rt, first, true, true);
            first++;
            n--;
        } else if (r && r != -EAGAIN && r != -EINTR && r != -EEXIST) {
            rt_fail(rt, "UFFDIO_CONTINUE of %llu pages from 0x%llx: %s", (unsigned long long)n,
                    (unsigned long long)first, strerror(-r));
            return -1;
        }
    }
    return rt->failed ? -1 : 0;
}

/* Node 0 owns every page at boot: the engine makes each one still INITIAL
 * MODIFIED, and runs of them are mapped writable with one ioctl each. */
static int map_owned_up_front(struct ivy_rt *rt)
{
    struct ivy_actions acts; /* the row's actions: none */
    uint64_t run = 0;
    for (uint64_t p = 0; p <= rt->npages; p++) {
        if (p < rt->npages && rt->pg[p].mapped == MAP_NONE && ivy_engine_map_owned(&rt->engine, p, &acts)) {
            run++;
            continue;
        }
        if (run && map_range(rt, p - run, run))
            return -1;
        rt->stats.mapped_up_front += run;
        run = 0;
    }
    return 0;
}

int ivy_rt_start(struct ivy_rt *rt)
{
    if (rt->started)
        return -1;
    if (rt->cfg.map_owned && rt->cfg.self == 0 && map_owned_up_front(rt))
        return -1;
    uint64_t now = now_ns();
    for (unsigned i = 0; i < rt->cfg.nnodes; i++)
        rt->conns[i].last_recv_ns = rt->conns[i].last_send_ns = now;
    uint64_t ns = (uint64_t)rt->cfg.heartbeat_ms * 1000000ull;
    struct itimerspec its = {{(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)},
                             {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)}};
    if (timerfd_settime(rt->timerfd, 0, &its, NULL)) {
        /* Without it no heartbeat is sent and no silent peer is noticed. */
        rt_fail(rt, "timerfd_settime: %s", strerror(errno));
        return -1;
    }
    int r = pthread_create(&rt->thread, NULL, rt_event_loop, rt);
    if (r) {
        rt_fail(rt, "pthread_create: %s", strerror(r));
        return -1;
    }
    char name[16];
    snprintf(name, sizeof name, "ivy-dsm-%u", rt->cfg.self);
    pthread_setname_np(rt->thread, name); /* for top, perf and ps: cosmetic, may fail */
    rt->started = true;
    if (rt->cfg.fifo_priority) {
        struct sched_param sp = {.sched_priority = rt->cfg.fifo_priority};
        r = pthread_setschedparam(rt->thread, SCHED_FIFO, &sp);
        if (r) {
            rt_fail(rt, "SCHED_FIFO priority %u for the DSM thread: %s (needs root or CAP_SYS_NICE)",
                    rt->cfg.fifo_priority, strerror(r));
            ivy_rt_stop(rt); /* joins the loop, which saw the failure */
            return -1;
        }
    }
    return 0;
}

void ivy_rt_stop(struct ivy_rt *rt)
{
    if (rt->stopped)
        return;
    rt->stopped = true;
    if (rt->started) {
        uint64_t one = 1;
        if (write(rt->stopfd, &one, sizeof one) < 0) {
            /* cannot fail for an eventfd far from overflow */
        }
        pthread_join(rt->thread, NULL);
    }
    rt_release_faulters(rt);
    for (unsigned i = 0; i < IVY_MAX_NODES; i++) {
        struct conn *c = &rt->conns[i];
        if (c->fd >= 0 && rt->epfd >= 0)
            link_close(rt, c);
        else if (c->fd >= 0)
            close(c->fd), c->fd = -1;
    }
    int *fds[] = {&rt->uffd, &rt->epfd, &rt->stopfd, &rt->timerfd};
    for (unsigned i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
}

void ivy_rt_destroy(struct ivy_rt *rt)
{
    if (!rt)
        return;
    ivy_rt_stop(rt);
    if (rt->failfd >= 0)
        close(rt->failfd);
    for (unsigned i = 0; i < IVY_MAX_NODES; i++) {
        free(rt->conns[i].in);
        free(rt->conns[i].out);
        link_free_keys(&rt->conns[i]);
    }
    for (uint64_t p = 0; rt->pg && p < rt->npages; p++) {
        while (rt->pg[p].parked) {
            struct parked *next = rt->pg[p].parked->next;
            free(rt->pg[p].parked);
            rt->pg[p].parked = next;
        }
    }
    free(rt->fifo.q);
    free(rt->pages);
    free(rt->pg);
    free(rt->held_pages);
    trace_destroy(rt);
    free(rt);
}

const struct ivy_rt_stats *ivy_rt_stats(const struct ivy_rt *rt) { return &rt->stats; }

const struct ivy_rt_failure *ivy_rt_failure(const struct ivy_rt *rt)
{
    return __atomic_load_n(&rt->failed, __ATOMIC_ACQUIRE) ? &rt->failure : NULL;
}

const char *ivy_rt_error(const struct ivy_rt *rt)
{
    const struct ivy_rt_failure *f = ivy_rt_failure(rt);
    return f ? f->text : NULL;
}

int ivy_rt_failure_fd(const struct ivy_rt *rt) { return rt->failfd; }

unsigned ivy_rt_top_pages(const struct ivy_rt *rt, uint64_t *pages, uint32_t *counts, unsigned n)
{
    unsigned filled = 0;
    for (uint64_t p = 0; p < rt->npages; p++) {
        uint32_t c = __atomic_load_n(&rt->pg[p].fault_count, __ATOMIC_RELAXED);
        if (!c || (filled == n && c <= counts[n - 1]))
            continue;
        unsigned i = filled < n ? filled++ : n - 1;
        while (i > 0 && counts[i - 1] < c) {
            pages[i] = pages[i - 1];
            counts[i] = counts[i - 1];
            i--;
        }
        pages[i] = p;
        counts[i] = c;
    }
    return filled;
}

int ivy_rt_access(const struct ivy_rt *rt, uint64_t page)
{
    return page < rt->npages ? ivy_engine_access(&rt->engine, page) : -1;
}
