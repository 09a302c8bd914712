/*
 * link.c - the node's TCP links: sealed records, frame reassembly, output
 * queues, heartbeats.
 *
 * Sockets are non-blocking and owned by the event-loop thread. Every frame
 * travels as one AES-256-GCM record (aead.h) under the link's per-direction
 * keys from the handshake: it is sealed straight from the header and the
 * guest page into the output queue (one pass, no copy besides the cipher's),
 * and a received record is opened in the reassembly buffer and decoded
 * (wire.h) only once it verified, so a forged, altered, replayed, reordered
 * or dropped frame ends the link before anything of it is used. Output goes
 * to the kernel at once and stays queued (EPOLLOUT armed) only when the
 * kernel does not take it all; with cfg.batch a peer's later frames of one
 * pass of the event loop wait for its end (link_end_pass) and leave in one
 * send(). The wire is the same either way: one record per frame.
 */
#define _GNU_SOURCE
#include "rt_internal.h"

#include "aead.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static void conn_arm(struct ivy_rt *rt, struct conn *c, bool want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.u64 = c->peer};
    if (epoll_ctl(rt->epfd, EPOLL_CTL_MOD, c->fd, &ev))
        rt_fail(rt, "epoll_ctl on link to node %u: %s", c->peer, strerror(errno));
    c->want_out = want_out;
}

/* Room for len more bytes at the end of the output queue (the caller fills them and adds len). */
static uint8_t *conn_reserve(struct conn *c, size_t len)
{
    if (c->out_off + c->out_len + len > c->out_cap) {
        memmove(c->out, c->out + c->out_off, c->out_len);
        c->out_off = 0;
        if (c->out_len + len > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 65536;
            while (cap < c->out_len + len)
                cap *= 2;
            uint8_t *n = realloc(c->out, cap);
            if (!n)
                abort(); /* out of memory on the data plane: nothing sensible left */
            c->out = n;
            c->out_cap = cap;
        }
    }
    return c->out + c->out_off + c->out_len;
}

static void conn_queue(struct conn *c, const uint8_t *buf, size_t len)
{
    memcpy(conn_reserve(c, len), buf, len);
    c->out_len += len;
}

int link_init_keys(struct conn *c, const uint8_t *send_key, const uint8_t *recv_key)
{
    c->tx = ivy_aead_new(send_key, 1);
    c->rx = ivy_aead_new(recv_key, 0);
    return c->tx && c->rx ? 0 : -1;
}

void link_free_keys(struct conn *c)
{
    ivy_aead_free(c->tx);
    ivy_aead_free(c->rx);
    c->tx = c->rx = NULL;
}

/* One send() of the output queue; what the kernel does not take waits for EPOLLOUT. */
static void link_push(struct ivy_rt *rt, struct conn *c)
{
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len, MSG_NOSIGNAL);
    rt->stats.sends++;
    PROF(rt, PROF_SENT);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        rt_fail_as(rt, IVY_FAIL_PEER_LOST, c->peer, IVY_RT_NO_PAGE, "send",
                   "sending to node %u failed: %s", c->peer, strerror(errno));
        return;
    }
    size_t done = n < 0 ? 0 : (size_t)n;
    c->out_off += done;
    c->out_len -= done;
    if (c->out_len) {
        rt->stats.sends_queued++;
        conn_arm(rt, c, true);
    } else {
        c->out_off = 0;
    }
}

/*
 * The sealed path: the record is built in the output queue (so the page's
 * bytes are taken now, whatever the guest writes next), then the queue goes
 * to the kernel. With cfg.batch a peer's first frame of a pass still goes at
 * once (a fault's request or reply is never held back), and later ones wait
 * in the queue for link_end_pass or for batch_bytes, whichever comes first:
 * one send() for a burst. Order is the queue's, so per-link FIFO holds.
 */
static void link_send_sealed(struct ivy_rt *rt, struct conn *c, const uint8_t *hdr, const uint8_t *data,
                             size_t record)
{
    uint8_t *dst = conn_reserve(c, record);
    if (ivy_aead_seal2(c->tx, hdr, IVY_WIRE_HDR_SIZE, data, data ? IVY_PAGE_SIZE : 0, dst)) {
        rt_fail(rt, "sealing a frame for node %u failed (libcrypto)", c->peer);
        return;
    }
    c->out_len += record;
    if (c->want_out) { /* the kernel has not taken earlier bytes: EPOLLOUT sends these after them */
        rt->stats.sends_queued++;
        return;
    }
    if (rt->cfg.batch) {
        rt->pass_peers |= 1ull << c->peer;
        if (c->pass_frames++ && c->out_len < rt->cfg.batch_bytes) {
            rt->stats.batched++;
            return;
        }
    }
    link_push(rt, c);
}

/* End of a pass of the event loop: every batch waiting goes to the kernel (cfg.batch). */
void link_end_pass(struct ivy_rt *rt)
{
    while (rt->pass_peers && !rt->failed) {
        struct conn *c = &rt->conns[__builtin_ctzll(rt->pass_peers)];
        rt->pass_peers &= rt->pass_peers - 1;
        c->pass_frames = 0;
        if (c->fd >= 0 && c->out_len && !c->want_out)
            link_push(rt, c);
    }
}

void link_flush(struct ivy_rt *rt, struct conn *c)
{
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len, MSG_NOSIGNAL);
        rt->stats.sends++;
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            rt_fail_as(rt, IVY_FAIL_PEER_LOST, c->peer, IVY_RT_NO_PAGE, "send",
                       "sending to node %u failed: %s", c->peer, strerror(errno));
            return;
        }
        c->out_off += (size_t)n;
        c->out_len -= (size_t)n;
    }
    if (!c->out_len)
        c->out_off = 0;
    conn_arm(rt, c, c->out_len != 0);
}

/* Header plus optional page, straight to the socket when nothing is queued. */
void link_send(struct ivy_rt *rt, struct conn *c, uint8_t type, const struct ivy_msg *m,
                      const uint8_t *data)
{
    uint8_t hdr[IVY_WIRE_HDR_SIZE];
    ivy_wire_encode(hdr, type, m);
    size_t total = IVY_WIRE_HDR_SIZE + (data ? IVY_PAGE_SIZE : 0);
    size_t done = 0;
    if (c->fd < 0) {
        char wait[128];
        rt_describe_wait(rt, wait, sizeof wait);
        rt_fail_as(rt, IVY_FAIL_PEER_LEFT, c->peer, m->page, rt_type_name(type),
                   "node %u has left (BYE) but a %s for page 0x%llx must go to it (%s)", c->peer,
                   rt_type_name(type), (unsigned long long)m->page, wait);
        return;
    }
    size_t record = total + (c->tx ? IVY_SEAL_OVERHEAD : 0);
    /* Counted before the send: a peer may act on the frame, and the test
     * reading both nodes' counters, before sendmsg returns here. Frame bytes,
     * as the receiver counts them (each record adds IVY_SEAL_OVERHEAD). */
    rt->stats.msgs_sent[type]++;
    rt->stats.bytes_sent[type] += total;
    TRACE(rt, trace_send, c, type, m, total);
    if (c->tx) {
        link_send_sealed(rt, c, hdr, data, record);
        c->last_send_ns = now_ns();
        return;
    }
    /* Unsealed frames: only the benchmark's baseline (ivy_rt_config.insecure_plaintext). */
    if (!c->out_len) {
        struct iovec iov[2] = {{hdr, IVY_WIRE_HDR_SIZE}, {(void *)data, data ? IVY_PAGE_SIZE : 0}};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = data ? 2 : 1};
        ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        rt->stats.sends++;
        PROF(rt, PROF_SENT);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            rt_fail_as(rt, IVY_FAIL_PEER_LOST, c->peer, m->page, "send",
                       "sending to node %u failed: %s", c->peer, strerror(errno));
            return;
        }
        done = n < 0 ? 0 : (size_t)n;
    }
    if (done < IVY_WIRE_HDR_SIZE)
        conn_queue(c, hdr + done, IVY_WIRE_HDR_SIZE - done);
    if (data && done < total) {
        size_t from = done > IVY_WIRE_HDR_SIZE ? done - IVY_WIRE_HDR_SIZE : 0;
        conn_queue(c, data + from, IVY_PAGE_SIZE - from);
    }
    if (done < total) {
        rt->stats.sends_queued++;
        conn_arm(rt, c, true);
    }
    c->last_send_ns = now_ns();
}

void link_close(struct ivy_rt *rt, struct conn *c)
{
    if (c->fd < 0)
        return;
    (void)epoll_ctl(rt->epfd, EPOLL_CTL_DEL, c->fd, NULL); /* close() below removes it anyway */
    close(c->fd);
    c->fd = -1;
}

/* Decode and apply one plaintext frame; the bytes used, 0 if incomplete or the node failed.
 * A frame inside a record must fill it exactly (whole == its length). */
static size_t link_decode_next(struct ivy_rt *rt, struct conn *c, const uint8_t *buf, size_t len, size_t whole)
{
    struct ivy_wire_frame f;
    int st = ivy_wire_decode(buf, len, rt->npages, rt->cfg.nnodes, &f);
    if (st == IVY_WIRE_SHORT && !whole)
        return 0;
    if (st == IVY_WIRE_OK && whole && f.frame_len != whole)
        st = IVY_WIRE_BAD_LENGTH;
    if (st != IVY_WIRE_OK) {
        const char *why = ivy_wire_status_name(st == IVY_WIRE_SHORT ? IVY_WIRE_BAD_LENGTH : st);
        rt_fail_as(rt, IVY_FAIL_PEER_GARBAGE, c->peer, IVY_RT_NO_PAGE, why,
                   "node %u sent a bad frame: %s; dropping the link", c->peer, why);
        return 0;
    }
    rt_handle_frame(rt, c, &f);
    return f.frame_len;
}

/* Verify, decrypt and apply the record at buf; the bytes used, 0 if incomplete or the node failed. */
static size_t link_open_next(struct ivy_rt *rt, struct conn *c, uint8_t *buf, size_t len)
{
    if (len < IVY_SEAL_PREFIX)
        return 0;
    uint32_t frame = ivy_get32(buf);
    if (frame != IVY_WIRE_HDR_SIZE && frame != IVY_WIRE_MAX_FRAME) {
        rt_fail_as(rt, IVY_FAIL_PEER_GARBAGE, c->peer, IVY_RT_NO_PAGE, "record length",
                   "node %u sent a record of %u bytes, which no DSM frame has (forged or corrupted); "
                   "dropping the link", c->peer, frame);
        return 0;
    }
    size_t record = frame + IVY_SEAL_OVERHEAD;
    if (len < record)
        return 0;
    if (ivy_aead_open(c->rx, buf)) {
        rt_fail_as(rt, IVY_FAIL_PEER_GARBAGE, c->peer, IVY_RT_NO_PAGE, "authentication",
                   "node %u sent a frame that failed authentication (forged, altered, replayed, reordered "
                   "or after a dropped one); dropping the link", c->peer);
        return 0;
    }
    return link_decode_next(rt, c, buf + IVY_SEAL_PREFIX, frame, frame) ? record : 0;
}

void link_read(struct ivy_rt *rt, struct conn *c)
{
    while (!rt->failed && c->fd >= 0) {
        size_t room = IN_CAP - c->in_len;
        ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
        PROF(rt, PROF_RECV);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            char wait[128];
            rt_describe_wait(rt, wait, sizeof wait);
            rt_fail_as(rt, IVY_FAIL_PEER_LOST, c->peer, IVY_RT_NO_PAGE, "recv",
                       "connection to node %u failed: %s (%s)", c->peer, strerror(errno), wait);
            return;
        }
        if (n == 0) {
            char wait[128];
            uint64_t first;
            uint8_t kind;
            if (c->bye) {
                /* A clean leave is fine only if nothing here may still need that node:
                 * an answer to a request in flight would never come. */
                link_close(rt, c);
                if (rt_awaited(rt, &first, &kind)) {
                    rt_describe_wait(rt, wait, sizeof wait);
                    rt_fail_as(rt, IVY_FAIL_PEER_LEFT, c->peer, first, "EOF after BYE",
                               "node %u left the cluster (BYE) %s", c->peer, wait);
                }
                return;
            }
            rt_describe_wait(rt, wait, sizeof wait);
            rt_fail_as(rt, IVY_FAIL_PEER_LOST, c->peer, IVY_RT_NO_PAGE, "EOF without BYE",
                       "node %u closed the connection without BYE %s", c->peer, wait);
            return;
        }
        c->in_len += (size_t)n;
        c->last_recv_ns = now_ns();
        size_t off = 0;
        while (!rt->failed) {
            size_t used = c->rx ? link_open_next(rt, c, c->in + off, c->in_len - off)
                                : link_decode_next(rt, c, c->in + off, c->in_len - off, 0);
            if (!used)
                break;
            off += used;
        }
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
        /* Less than asked for: the socket is drained, epoll (level-triggered) reports more. */
        if ((size_t)n < room)
            return;
    }
}

void link_heartbeat(struct ivy_rt *rt)
{
    uint64_t expirations, now = now_ns();
    if (read(rt->timerfd, &expirations, sizeof expirations) < 0)
        return;
    struct ivy_msg ping;
    memset(&ping, 0, sizeof ping);
    ping.sender = rt->cfg.self;
    for (unsigned i = 0; i < rt->cfg.nnodes && !rt->failed; i++) {
        struct conn *c = &rt->conns[i];
        if (i == rt->cfg.self || c->fd < 0)
            continue;
        uint64_t silent = now - c->last_recv_ns;
        if (!c->bye && silent > (uint64_t)rt->cfg.timeout_ms * 1000000ull) {
            char wait[128];
            rt_describe_wait(rt, wait, sizeof wait);
            rt_fail_as(rt, IVY_FAIL_PEER_LOST, (uint16_t)i, IVY_RT_NO_PAGE, "silence",
                       "node %u silent for %.1f s %s", i, silent / 1e9, wait);
            return;
        }
        if (now - c->last_send_ns >= (uint64_t)rt->cfg.heartbeat_ms * 900000ull) {
            ping.requester = rt->cfg.self;
            link_send(rt, c, IVY_WIRE_PING, &ping, NULL);
        }
    }
}

/* Clean stop: tell every peer, so its EOF is not mistaken for a crash. */
void link_say_bye(struct ivy_rt *rt)
{
    rt->leaving = true;
    struct ivy_msg bye;
    memset(&bye, 0, sizeof bye);
    bye.sender = bye.requester = rt->cfg.self;
    for (unsigned i = 0; i < rt->cfg.nnodes; i++) {
        struct conn *c = &rt->conns[i];
        if (c->fd < 0)
            continue;
        link_send(rt, c, IVY_WIRE_BYE, &bye, NULL);
        /* Bounded blocking flush: a peer that stopped reading cannot hold up stop(). */
        struct timeval tv = {1, 0};
        int flags = fcntl(c->fd, F_GETFL);
        /* If either fails the flush stays non-blocking: what the kernel takes at once goes, the
         * rest is lost with the link we are closing anyway (leaving: no error is reported). */
        if (setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0 && flags >= 0)
            (void)fcntl(c->fd, F_SETFL, flags & ~O_NONBLOCK);
        link_flush(rt, c);
    }
}
