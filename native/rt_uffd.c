/*
 * rt_uffd.c - what the runtime does to the guest's view of a page, through
 * userfaultfd: map it (UFFDIO_CONTINUE, readable or writable), take write
 * access away or give it back (UFFDIO_WRITEPROTECT), drop it (MADV_DONTNEED;
 * the bytes stay in the memfd), and wake faulters whose access already
 * suffices. Only the event-loop thread calls these (runtime.c's actions).
 */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

/* Newer than the distribution's uapi header (Linux 6.6+). */
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif

static int uffd_ioctl(struct ivy_rt *rt, unsigned long req, void *arg)
{
    for (;;) {
        if (ioctl(rt->uffd, req, arg) == 0)
            return 0;
        if (errno != EAGAIN && errno != EINTR)
            return -errno;
        /* EAGAIN: the mm is changing (fork, mremap); the request is still valid. */
    }
}

static void uffd_wake(struct ivy_rt *rt, uint64_t page)
{
    struct uffdio_range r = {(uint64_t)(uintptr_t)rt_guest_page(rt, page), IVY_PAGE_SIZE};
    rt->stats.wakes++;
    int e = uffd_ioctl(rt, UFFDIO_WAKE, &r);
    if (e)
        rt_fail(rt, "UFFDIO_WAKE page 0x%llx: %s", (unsigned long long)page, strerror(-e));
}

/* Write-protect on or off; turning it off wakes threads waiting on the page. */
static void uffd_protect(struct ivy_rt *rt, uint64_t page, bool on)
{
    struct uffdio_writeprotect wp = {{(uint64_t)(uintptr_t)rt_guest_page(rt, page), IVY_PAGE_SIZE},
                                     on ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
    int r = uffd_ioctl(rt, UFFDIO_WRITEPROTECT, &wp);
    if (r)
        rt_fail(rt, "UFFDIO_WRITEPROTECT(%d) page 0x%llx: %s", on, (unsigned long long)page, strerror(-r));
    if (on)
        rt->stats.wrprotects++;
    else
        rt->stats.wp_clears++;
}

/*
 * Make the guest view of `page` readable (rw=false) or writable and wake
 * faulters. A page with no PTE gets UFFDIO_CONTINUE (bytes are already in the
 * memfd); a mapped page only changes its write protection. EEXIST means our
 * record said "not mapped" but a PTE is there (a duplicate fault already
 * handled): fix the protection and wake explicitly.
 */
void rt_grant(struct ivy_rt *rt, uint64_t page, bool rw, bool force_continue)
{
    uint8_t m = rt->pg[page].mapped;
    if (m == MAP_NONE || force_continue) {
        struct uffdio_continue c = {{(uint64_t)(uintptr_t)rt_guest_page(rt, page), IVY_PAGE_SIZE},
                                    rw ? 0 : UFFDIO_CONTINUE_MODE_WP, 0};
        int r = uffd_ioctl(rt, UFFDIO_CONTINUE, &c);
        rt->stats.continues++;
        if (r == 0) {
            rt->pg[page].mapped = rw ? MAP_RW : MAP_RO;
            return;
        }
        if (r != -EEXIST) {
            rt_fail(rt, "UFFDIO_CONTINUE page 0x%llx: %s", (unsigned long long)page, strerror(-r));
            return;
        }
        rt->stats.eexist++;
        uffd_protect(rt, page, !rw);
        rt->pg[page].mapped = rw ? MAP_RW : MAP_RO;
        uffd_wake(rt, page);
        return;
    }
    if (rw && m == MAP_RO) {
        uffd_protect(rt, page, false);
    } else if (!rw && m == MAP_RW) {
        uffd_protect(rt, page, true);
        uffd_wake(rt, page);
    } else {
        uffd_wake(rt, page);
    }
    rt->pg[page].mapped = rw ? MAP_RW : MAP_RO;
}

/*
 * Remove the guest mapping; the bytes stay in the memfd for version elision.
 * A write-protected PTE leaves a uffd-wp marker behind: measured harmless, the
 * next access still raises a MINOR fault, so no WP clear is spent first.
 */
void rt_zap(struct ivy_rt *rt, uint64_t page)
{
    rt->stats.zaps++;
    if (madvise(rt_guest_page(rt, page), IVY_PAGE_SIZE, MADV_DONTNEED))
        rt_fail(rt, "MADV_DONTNEED page 0x%llx: %s", (unsigned long long)page, strerror(errno));
    rt->pg[page].mapped = MAP_NONE;
}

void rt_wrprotect(struct ivy_rt *rt, uint64_t page)
{
    uffd_protect(rt, page, true);
    if (rt->pg[page].mapped == MAP_RW)
        rt->pg[page].mapped = MAP_RO;
}

/* A fault the engine says needs nothing: make the mapping match its access. */
void rt_wake_spurious(struct ivy_rt *rt, uint64_t page, bool minor)
{
    int access = ivy_engine_access(&rt->engine, page);
    rt->stats.faults_spurious++;
    rt->pg[page].fault_t0 = 0; /* nothing is being acquired: no latency to record */
    rt->pg[page].write_off = NO_WATCH;
    probe_fault_end(rt, page, now_ns());
    if (access == 0)
        uffd_wake(rt, page); /* it will fault again and be handled then */
    else
        rt_grant(rt, page, access == 2, minor);
}
