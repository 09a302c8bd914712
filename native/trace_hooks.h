/*
 * trace_hooks.h - how runtime.c and link.c feed the trace (trace.h) without
 * paying for it when it is off: every hook is one TRACE() line, a branch on
 * rt->trace that is predicted not taken, calling into trace.c only when on.
 */
#ifndef IVY_TRACE_HOOKS_H
#define IVY_TRACE_HOOKS_H

#include <stddef.h>
#include <stdint.h>

#include "trace.h"

struct ivy_rt;
struct conn;
struct ivy_msg;
struct ivy_action;
struct ivy_wire_frame;

#define TRACE(rt, hook, ...)                                                                                \
    do {                                                                                                    \
        if (__builtin_expect((rt)->trace != NULL, 0))                                                       \
            hook(rt, __VA_ARGS__);                                                                          \
    } while (0)

/* Allocate the ring if cfg.trace_records asks for one: 0, or -1 with a reason in err. */
int trace_create(struct ivy_rt *rt, char *err, size_t errlen);
void trace_destroy(struct ivy_rt *rt);

void trace_fault(struct ivy_rt *rt, uint64_t page, unsigned access, uint32_t tid);
void trace_send(struct ivy_rt *rt, const struct conn *c, uint8_t type, const struct ivy_msg *m, size_t bytes);
void trace_recv(struct ivy_rt *rt, const struct conn *c, const struct ivy_wire_frame *f);
/* Every engine action but SEND (link_send records what goes on the wire). */
void trace_action(struct ivy_rt *rt, const struct ivy_action *a);
/* HOLD_BEGIN with the deferred request, or HOLD_END (m NULL). */
void trace_hold(struct ivy_rt *rt, uint8_t kind, uint64_t page, const struct ivy_msg *m);

#endif
