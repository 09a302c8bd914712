"""cffi build script for hypervisor._ivy_native (the DSM engine, runtime and test kit).

setup.py names it in ``cffi_modules``, so ``pip install -e .`` compiles it; run
directly (``python native/build.py``) it builds the module in place for a quick
edit-compile loop.
"""
from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

NATIVE = Path(__file__).resolve().parent
SOURCES = ["engine.c", "runtime.c", "link.c", "testkit.c"]

CDEF = """
#define IVY_MAX_NODES 64
#define IVY_PAGE_SIZE 4096
#define IVY_MAX_ACTIONS ...
#define IVY_REPLY_DATA 1
#define IVY_REPLY_OWNERSHIP 2
#define IVY_WIRE_MAGIC ...
#define IVY_WIRE_PROTO ...
#define IVY_WIRE_HDR_SIZE 56
#define IVY_RT_LAT_BUCKETS 48
#define IVY_RT_NTYPES 8
#define IVY_RT_ERR_LEN 256

enum ivy_state { IVY_INITIAL, IVY_INVALID, IVY_SHARED, IVY_MODIFIED, ... };
enum ivy_pending { IVY_IDLE, IVY_WANT_READ, IVY_WANT_WRITE, IVY_WAIT_ACKS, IVY_READ_STALE, ... };
enum ivy_read_ownership { IVY_READ_GIANTVM, IVY_READ_IVY, ... };
enum ivy_manager { IVY_MGR_DYNAMIC, IVY_MGR_CENTRAL, IVY_MGR_FIXED, ... };
enum ivy_msg_type { IVY_MSG_READ = 1, IVY_MSG_WRITE = 2, IVY_MSG_REPLY = 3, IVY_MSG_INVALIDATE = 4,
                    IVY_MSG_INV_ACK = 5, IVY_MSG_TYPE_MAX = 5 };
enum ivy_action_kind { IVY_ACT_SEND = 1, IVY_ACT_MAP_RO, IVY_ACT_MAP_RW, IVY_ACT_ZAP, IVY_ACT_WRPROTECT,
                       IVY_ACT_WAKE, IVY_ACT_PARK, IVY_ACT_UNPARK, IVY_ACT_DONE, ... };
enum ivy_wire_type { IVY_WIRE_PING = 6, IVY_WIRE_BYE = 7, IVY_WIRE_TYPE_MAX = 7 };
enum ivy_wire_status { IVY_WIRE_OK, IVY_WIRE_SHORT, IVY_WIRE_BAD_MAGIC, IVY_WIRE_BAD_PROTO, IVY_WIRE_BAD_TYPE,
                       IVY_WIRE_BAD_FLAGS, IVY_WIRE_BAD_LENGTH, IVY_WIRE_BAD_PAGE, IVY_WIRE_BAD_NODE,
                       IVY_WIRE_BAD_COPYSET, IVY_WIRE_BAD_RESERVED };

struct ivy_msg {
    uint8_t type; uint8_t flags; uint16_t requester; uint16_t sender; uint16_t hops;
    uint64_t page; uint64_t version; uint64_t copyset; uint64_t txid;
};
struct ivy_page {
    uint8_t state; uint8_t owner; uint8_t pending; uint16_t probowner;
    uint64_t copyset; uint64_t version; uint64_t acks_missing; uint64_t txid;
    ...;
};
struct ivy_config {
    uint16_t self; uint16_t nnodes; uint8_t read_ownership; uint8_t manager; uint64_t npages;
    ...;
};
struct ivy_action { uint8_t kind; uint16_t to; uint64_t page; struct ivy_msg msg; ...; };
struct ivy_actions { unsigned n; struct ivy_action a[...]; };
struct ivy_engine { struct ivy_config cfg; struct ivy_page *pages; uint64_t next_txid; ...; };

void ivy_engine_init(struct ivy_engine *e, const struct ivy_config *cfg, struct ivy_page *pages);
void ivy_engine_set_version(struct ivy_engine *e, uint64_t page, uint64_t version);
void ivy_engine_fault(struct ivy_engine *e, uint64_t page, bool write, struct ivy_actions *out);
void ivy_engine_message(struct ivy_engine *e, const struct ivy_msg *m, struct ivy_actions *out);
uint16_t ivy_engine_route(const struct ivy_engine *e, uint64_t page);
int ivy_engine_access(const struct ivy_engine *e, uint64_t page);
const char *ivy_engine_check_message(const struct ivy_engine *e, const struct ivy_msg *m);
const char *ivy_state_name(uint8_t state);
const char *ivy_msg_name(uint8_t type);

struct ivy_wire_frame { struct ivy_msg msg; const uint8_t *data; uint32_t frame_len; };
void ivy_wire_encode(uint8_t out[56], uint8_t type, const struct ivy_msg *m);
enum ivy_wire_status ivy_wire_decode(const uint8_t *buf, size_t len, uint64_t npages, uint16_t nnodes,
                                     struct ivy_wire_frame *out);
const char *ivy_wire_status_name(int status);

struct ivy_rt_config {
    uint16_t self; uint16_t nnodes; uint8_t read_ownership; uint8_t manager; int memfd;
    uint64_t guest_addr; uint64_t vmm_addr; uint64_t size; int peer_fds[64];
    uint32_t heartbeat_ms; uint32_t timeout_ms; uint32_t poll_us; uint32_t hold_us;
};
struct ivy_rt_stats {
    uint64_t faults_read; uint64_t faults_write; uint64_t faults_wp; uint64_t faults_spurious;
    uint64_t faults_local; uint64_t faults_remote; uint64_t faults_duplicate;
    uint64_t msgs_sent[8]; uint64_t msgs_recv[8]; uint64_t bytes_sent[8]; uint64_t bytes_recv[8];
    uint64_t forwards; uint64_t reply_hops; uint64_t replies_data; uint64_t replies_elided;
    uint64_t parked; uint64_t unparked; uint64_t held; uint64_t holds_cut; uint64_t zaps; uint64_t wrprotects; uint64_t continues;
    uint64_t wp_clears; uint64_t wakes; uint64_t eexist; uint64_t sends_queued;
    uint64_t lat_count; uint64_t lat_sum_ns; uint64_t lat_max_ns; uint64_t lat_hist[48];
};
struct ivy_rt;
struct ivy_rt *ivy_rt_create(const struct ivy_rt_config *cfg, char *err, size_t errlen);
int ivy_rt_set_version(struct ivy_rt *rt, uint64_t page, uint64_t version);
int ivy_rt_start(struct ivy_rt *rt);
void ivy_rt_stop(struct ivy_rt *rt);
void ivy_rt_destroy(struct ivy_rt *rt);
const struct ivy_rt_stats *ivy_rt_stats(const struct ivy_rt *rt);
const char *ivy_rt_error(const struct ivy_rt *rt);
int ivy_rt_failure_fd(const struct ivy_rt *rt);
unsigned ivy_rt_top_pages(const struct ivy_rt *rt, uint64_t *pages, uint32_t *counts, unsigned n);
int ivy_rt_access(const struct ivy_rt *rt, uint64_t page);

uint64_t ivy_test_atomic_add(uint64_t addr, uint64_t delta, uint64_t count);
uint64_t ivy_test_atomic_add_yielding(uint64_t addr, uint64_t count);
uint64_t ivy_test_load64(uint64_t addr);
void ivy_test_store64(uint64_t addr, uint64_t value);
void ivy_test_fill(uint64_t addr, uint64_t len, uint64_t seed);
int64_t ivy_test_verify(uint64_t addr, uint64_t len, uint64_t seed);
int ivy_test_wait_value(uint64_t addr, uint64_t value, uint64_t timeout_ns);
uint64_t ivy_test_touch_timed(uint64_t addr, int write);
int ivy_test_pingpong(uint64_t addr, int self, uint64_t rounds, uint64_t *out_ns, uint64_t timeout_ns);
int ivy_bench_uffd_floor(uint64_t n, uint64_t *out_ns);
int ivy_bench_tcp_ping(int fd, uint64_t n, uint64_t *out_ns);
int ivy_bench_tcp_pong(int fd, uint64_t n);
int ivy_bench_tcp_ping_epoll(int fd, uint64_t n, uint64_t *out_ns);
int ivy_bench_tcp_pong_epoll(int fd, uint64_t n);
int ivy_bench_bound_fault(int fd, uint64_t n, uint64_t *out_ns);
int ivy_bench_bound_owner(int fd);
enum { IVY_MECH_WP_SET, IVY_MECH_WP_CLEAR, IVY_MECH_ZAP, IVY_MECH_CONTINUE, IVY_MECH_COPY, IVY_MECH_COUNT };
int ivy_bench_mechanisms(unsigned npages, uint64_t *out_ns);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "hypervisor._ivy_native",
    '#include "engine.h"\n#include "wire.h"\n#include "runtime.h"\n#include "testkit.h"\n',
    sources=[os.path.relpath(NATIVE / name) for name in SOURCES],
    include_dirs=[os.path.relpath(NATIVE)],
    # IVY_CFLAGS adds flags for an experiment, e.g. -DIVY_PROFILE (see rt_internal.h).
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11", *os.environ.get("IVY_CFLAGS", "").split()],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(NATIVE.parent), verbose=False)
