/* testkit.h - guest-view helpers for tests and the benchmark (see testkit.c). */
#ifndef IVY_TESTKIT_H
#define IVY_TESTKIT_H

#include <stdint.h>

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
/* Each mechanism of the fault path timed alone, on npages distinct pages:
 * out_ns[k * npages + i] for k = IVY_MECH_* below. 0, or -1 if the set-up failed. */
enum { IVY_MECH_WP_SET, IVY_MECH_WP_CLEAR, IVY_MECH_ZAP, IVY_MECH_CONTINUE, IVY_MECH_COPY, IVY_MECH_COUNT };
int ivy_bench_mechanisms(unsigned npages, uint64_t *out_ns);
/* Sealing alone, as the link does it (aead.c), each call after gap_ns asleep, as a node
 * waiting in epoll_wait between faults is: out_ns[k * n + i] for k = IVY_CRYPTO_* below.
 * 0, or -1 if libcrypto failed. */
enum { IVY_CRYPTO_SEAL_PAGE, IVY_CRYPTO_OPEN_PAGE, IVY_CRYPTO_SEAL_HDR, IVY_CRYPTO_OPEN_HDR, IVY_CRYPTO_COUNT };
int ivy_bench_crypto(unsigned n, uint64_t gap_ns, uint64_t *out_ns);

/* A lost message (the watchdog's tests): `node` is a struct ivy_rt's address. */
int ivy_test_drop_sends(uintptr_t node, uint8_t type, uint32_t count);
uint64_t ivy_test_dropped_page(uintptr_t node);

#endif
