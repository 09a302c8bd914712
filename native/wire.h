/*
 * wire.h - the DSM frame format between two nodes, and its pure codec.
 *
 * Every frame is a fixed 56-byte little-endian header, followed by exactly
 * 4096 bytes of page data for a REPLY carrying data, and by nothing otherwise.
 * The decoder checks every field against the cluster's shape (npages, nnodes)
 * before anything is handed to the engine: a peer sending garbage can make the
 * node stop with an error, never corrupt its state. It is pure (no I/O, no
 * globals) so it can be fuzzed from Python.
 *
 * Layout (offsets pinned by _Static_assert below):
 *    0 magic        u32  IVY_WIRE_MAGIC ("IVYD" on the wire)
 *    4 proto        u8   IVY_WIRE_PROTO
 *    5 type         u8   enum ivy_msg_type, or IVY_WIRE_PING / IVY_WIRE_BYE
 *    6 flags        u8   IVY_REPLY_* on a REPLY, IVY_REQ_WRITE_SOON or 0 on a READ, 0 otherwise
 *    7 reserved0    u8   0
 *    8 payload_len  u32  4096 for a REPLY with IVY_REPLY_DATA, 0 otherwise
 *   12 requester    u16  node that wants the page
 *   14 sender       u16  node that wrote this frame (must be the link's peer)
 *   16 hops         u16  forwards so far
 *   18 reserved1    u16  0
 *   20 reserved2    u32  0
 *   24 page         u64  < npages (0 for PING and BYE)
 *   32 version      u64  page version
 *   40 copyset      u64  bit per node, only bits < nnodes
 *   48 txid         u64  the requester's transaction id
 */
#ifndef IVY_WIRE_H
#define IVY_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine.h"

#define IVY_WIRE_MAGIC 0x44595649u /* bytes 'I' 'V' 'Y' 'D' read as little-endian u32 */
#define IVY_WIRE_PROTO 2u /* 2: every frame sealed (aead.h), handshake proves the connecting side first */
#define IVY_WIRE_HDR_SIZE 56u
#define IVY_WIRE_MAX_FRAME (IVY_WIRE_HDR_SIZE + IVY_PAGE_SIZE)

/* Link-level messages that never reach the engine. */
enum ivy_wire_type {
    IVY_WIRE_PING = 6, /* heartbeat: "I am alive" */
    IVY_WIRE_BYE = 7,  /* clean shutdown: EOF after this is not an error */
    IVY_WIRE_TYPE_MAX = 7
};

struct ivy_wire_hdr {
    uint32_t magic;
    uint8_t proto;
    uint8_t type;
    uint8_t flags;
    uint8_t reserved0;
    uint32_t payload_len;
    uint16_t requester;
    uint16_t sender;
    uint16_t hops;
    uint16_t reserved1;
    uint32_t reserved2;
    uint64_t page;
    uint64_t version;
    uint64_t copyset;
    uint64_t txid;
};

_Static_assert(sizeof(struct ivy_wire_hdr) == IVY_WIRE_HDR_SIZE, "wire header size");
_Static_assert(offsetof(struct ivy_wire_hdr, proto) == 4, "proto offset");
_Static_assert(offsetof(struct ivy_wire_hdr, type) == 5, "type offset");
_Static_assert(offsetof(struct ivy_wire_hdr, flags) == 6, "flags offset");
_Static_assert(offsetof(struct ivy_wire_hdr, payload_len) == 8, "payload_len offset");
_Static_assert(offsetof(struct ivy_wire_hdr, requester) == 12, "requester offset");
_Static_assert(offsetof(struct ivy_wire_hdr, sender) == 14, "sender offset");
_Static_assert(offsetof(struct ivy_wire_hdr, hops) == 16, "hops offset");
_Static_assert(offsetof(struct ivy_wire_hdr, page) == 24, "page offset");
_Static_assert(offsetof(struct ivy_wire_hdr, version) == 32, "version offset");
_Static_assert(offsetof(struct ivy_wire_hdr, copyset) == 40, "copyset offset");
_Static_assert(offsetof(struct ivy_wire_hdr, txid) == 48, "txid offset");
_Static_assert((int)IVY_MSG_TYPE_MAX < (int)IVY_WIRE_PING, "link types must not collide with engine types");

enum ivy_wire_status {
    IVY_WIRE_OK = 0,
    IVY_WIRE_SHORT = 1,       /* not a whole frame yet: read more */
    IVY_WIRE_BAD_MAGIC = 2,
    IVY_WIRE_BAD_PROTO = 3,
    IVY_WIRE_BAD_TYPE = 4,
    IVY_WIRE_BAD_FLAGS = 5,
    IVY_WIRE_BAD_LENGTH = 6,
    IVY_WIRE_BAD_PAGE = 7,
    IVY_WIRE_BAD_NODE = 8,
    IVY_WIRE_BAD_COPYSET = 9,
    IVY_WIRE_BAD_RESERVED = 10
};

/* A decoded frame: msg is what the engine sees; data points into the input. */
struct ivy_wire_frame {
    struct ivy_msg msg;
    const uint8_t *data; /* IVY_PAGE_SIZE bytes, or NULL */
    uint32_t frame_len;  /* header + payload: how much input the frame used */
};

static inline void ivy_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void ivy_put32(uint8_t *p, uint32_t v) { ivy_put16(p, (uint16_t)v); ivy_put16(p + 2, (uint16_t)(v >> 16)); }
static inline void ivy_put64(uint8_t *p, uint64_t v) { ivy_put32(p, (uint32_t)v); ivy_put32(p + 4, (uint32_t)(v >> 32)); }
static inline uint16_t ivy_get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ivy_get32(const uint8_t *p) { return ivy_get16(p) | ((uint32_t)ivy_get16(p + 2) << 16); }
static inline uint64_t ivy_get64(const uint8_t *p) { return ivy_get32(p) | ((uint64_t)ivy_get32(p + 4) << 32); }

/* Header bytes for `m` of wire type `type` (an engine type, PING or BYE). */
static inline void ivy_wire_encode(uint8_t out[IVY_WIRE_HDR_SIZE], uint8_t type, const struct ivy_msg *m)
{
    int data = type == IVY_MSG_REPLY && (m->flags & IVY_REPLY_DATA);
    memset(out, 0, IVY_WIRE_HDR_SIZE);
    ivy_put32(out + offsetof(struct ivy_wire_hdr, magic), IVY_WIRE_MAGIC);
    out[offsetof(struct ivy_wire_hdr, proto)] = IVY_WIRE_PROTO;
    out[offsetof(struct ivy_wire_hdr, type)] = type;
    out[offsetof(struct ivy_wire_hdr, flags)] = type == IVY_MSG_REPLY || type == IVY_MSG_READ ? m->flags : 0;
    ivy_put32(out + offsetof(struct ivy_wire_hdr, payload_len), data ? IVY_PAGE_SIZE : 0);
    ivy_put16(out + offsetof(struct ivy_wire_hdr, requester), m->requester);
    ivy_put16(out + offsetof(struct ivy_wire_hdr, sender), m->sender);
    ivy_put16(out + offsetof(struct ivy_wire_hdr, hops), m->hops);
    ivy_put64(out + offsetof(struct ivy_wire_hdr, page), m->page);
    ivy_put64(out + offsetof(struct ivy_wire_hdr, version), m->version);
    ivy_put64(out + offsetof(struct ivy_wire_hdr, copyset), m->copyset);
    ivy_put64(out + offsetof(struct ivy_wire_hdr, txid), m->txid);
}

/*
 * Decode the frame at the start of buf[0..len). Checks, in this order: magic,
 * protocol version, type, reserved bytes, flags, payload length, whole frame
 * present, page, node ids, copyset. Only IVY_WIRE_OK fills `out`.
 */
static inline enum ivy_wire_status ivy_wire_decode(const uint8_t *buf, size_t len, uint64_t npages,
                                                   uint16_t nnodes, struct ivy_wire_frame *out)
{
    if (len < 4)
        return IVY_WIRE_SHORT;
    if (ivy_get32(buf) != IVY_WIRE_MAGIC)
        return IVY_WIRE_BAD_MAGIC;
    if (len < IVY_WIRE_HDR_SIZE)
        return IVY_WIRE_SHORT;
    uint8_t proto = buf[offsetof(struct ivy_wire_hdr, proto)];
    uint8_t type = buf[offsetof(struct ivy_wire_hdr, type)];
    uint8_t flags = buf[offsetof(struct ivy_wire_hdr, flags)];
    uint32_t payload_len = ivy_get32(buf + offsetof(struct ivy_wire_hdr, payload_len));
    if (proto != IVY_WIRE_PROTO)
        return IVY_WIRE_BAD_PROTO;
    if (type < IVY_MSG_READ || type > IVY_WIRE_TYPE_MAX)
        return IVY_WIRE_BAD_TYPE;
    if (buf[offsetof(struct ivy_wire_hdr, reserved0)] != 0 ||
        ivy_get16(buf + offsetof(struct ivy_wire_hdr, reserved1)) != 0 ||
        ivy_get32(buf + offsetof(struct ivy_wire_hdr, reserved2)) != 0)
        return IVY_WIRE_BAD_RESERVED;
    uint8_t allowed_flags = type == IVY_MSG_REPLY ? (IVY_REPLY_DATA | IVY_REPLY_OWNERSHIP | IVY_REPLY_MIGRATORY |
                                                     IVY_REPLY_WRITABLE)
                            : type == IVY_MSG_READ ? IVY_REQ_WRITE_SOON : 0;
    if (flags & ~allowed_flags)
        return IVY_WIRE_BAD_FLAGS;
    uint32_t want_len = (type == IVY_MSG_REPLY && (flags & IVY_REPLY_DATA)) ? IVY_PAGE_SIZE : 0;
    if (payload_len != want_len)
        return IVY_WIRE_BAD_LENGTH;
    if (len < IVY_WIRE_HDR_SIZE + (size_t)payload_len)
        return IVY_WIRE_SHORT;

    struct ivy_msg m;
    memset(&m, 0, sizeof m);
    m.type = type;
    m.flags = flags;
    m.requester = ivy_get16(buf + offsetof(struct ivy_wire_hdr, requester));
    m.sender = ivy_get16(buf + offsetof(struct ivy_wire_hdr, sender));
    m.hops = ivy_get16(buf + offsetof(struct ivy_wire_hdr, hops));
    m.page = ivy_get64(buf + offsetof(struct ivy_wire_hdr, page));
    m.version = ivy_get64(buf + offsetof(struct ivy_wire_hdr, version));
    m.copyset = ivy_get64(buf + offsetof(struct ivy_wire_hdr, copyset));
    m.txid = ivy_get64(buf + offsetof(struct ivy_wire_hdr, txid));

    int link_only = type == IVY_WIRE_PING || type == IVY_WIRE_BYE;
    if (link_only ? m.page != 0 : m.page >= npages)
        return IVY_WIRE_BAD_PAGE;
    if (nnodes == 0 || nnodes > IVY_MAX_NODES || m.requester >= nnodes || m.sender >= nnodes)
        return IVY_WIRE_BAD_NODE;
    uint64_t node_mask = nnodes == 64 ? ~0ull : ((1ull << nnodes) - 1);
    if (m.copyset & ~node_mask)
        return IVY_WIRE_BAD_COPYSET;

    out->msg = m;
    out->data = payload_len ? buf + IVY_WIRE_HDR_SIZE : NULL;
    out->frame_len = IVY_WIRE_HDR_SIZE + payload_len;
    return IVY_WIRE_OK;
}

static inline const char *ivy_wire_status_name(int status)
{
    switch (status) {
    case IVY_WIRE_OK: return "ok";
    case IVY_WIRE_SHORT: return "incomplete frame";
    case IVY_WIRE_BAD_MAGIC: return "bad magic";
    case IVY_WIRE_BAD_PROTO: return "unsupported protocol version";
    case IVY_WIRE_BAD_TYPE: return "unknown message type";
    case IVY_WIRE_BAD_FLAGS: return "flags not allowed for this type";
    case IVY_WIRE_BAD_LENGTH: return "payload length wrong for this type";
    case IVY_WIRE_BAD_PAGE: return "page number out of range";
    case IVY_WIRE_BAD_NODE: return "node id out of range";
    case IVY_WIRE_BAD_COPYSET: return "copyset names a node outside the cluster";
    case IVY_WIRE_BAD_RESERVED: return "reserved field not zero";
    default: return "unknown status";
    }
}

#endif
