/*
 * The C half of the guest runtime. Runs at CPL3 (except when a program's
 * rt_cpl0_hook calls into it); built with -mgeneral-regs-only so it stays
 * free of SSE either way.
 */
#include "rt.h"

_Static_assert(sizeof(rt_page_u64) == RT_PAGE_SIZE, "rt_page_u64 must fill its page");
_Static_assert(RT_IRQ_COUNT_OFF + 256 * 8 <= RT_IRQ_AREA - 8, "counters overlap the vCPU index slot");

/* Read by every barrier: link.ld gives this section pages of its own, so
 * under the DSM no hot variable's writes invalidate the readers' copies. */
#define READ_MOSTLY __attribute__((section(".rt_readmostly")))
unsigned rt_ncpus READ_MOSTLY;
unsigned long rt_ram READ_MOSTLY;

static struct { rt_spinlock_t lock; } RT_PAGE_ALIGNED console = { RT_SPINLOCK_INIT };
static rt_barrier_t all_cpus_barrier;

/* ---- libc pieces gcc may call on its own ---- */

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* ---- console ---- */

void rt_putc(char c) { rt_outb(RT_PORT_CONSOLE, (uint8_t)c); }

static void put_locked(const char *s, size_t n)
{
    rt_spin_lock(&console.lock);
    for (size_t i = 0; i < n; i++)
        rt_putc(s[i]);
    rt_spin_unlock(&console.lock);
}

void rt_puts(const char *s) { put_locked(s, strlen(s)); }

void rt_printf(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = rt_vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    put_locked(buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

int rt_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = rt_vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

/* An output cursor that counts what it could not store, like snprintf. */
struct out {
    char *buf;
    size_t size, len;
};

static void emit(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void emit_padded(struct out *o, const char *s, size_t n, int width, int left, char pad)
{
    int fill = width > (int)n ? width - (int)n : 0;
    if (!left)
        while (fill-- > 0)
            emit(o, pad);
    while (n--)
        emit(o, *s++);
    if (left)
        while (fill-- > 0)
            emit(o, ' ');
}

static void emit_number(struct out *o, uint64_t v, int negative, unsigned base, int upper,
                        int width, int left, char pad)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    size_t n = 0;
    do {
        tmp[sizeof tmp - 1 - n++] = digits[v % base];
        v /= base;
    } while (v);
    if (negative) {
        if (pad == '0') {            /* "-0042", not "00-42" */
            emit(o, '-');
            width--;
        } else {
            tmp[sizeof tmp - 1 - n++] = '-';
        }
    }
    emit_padded(o, tmp + sizeof tmp - n, n, width, left, pad);
}

int rt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(&o, *fmt);
            continue;
        }
        fmt++;
        int left = 0, width = 0, longs = 0;
        char pad = ' ';
        for (;; fmt++) {
            if (*fmt == '-')
                left = 1;
            else if (*fmt == '0')
                pad = '0';
            else
                break;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            longs++;
            fmt++;
        }
        if (left)
            pad = ' ';
        switch (*fmt) {
        case 'd':
        case 'i': {
            int64_t v = longs ? va_arg(ap, long) : va_arg(ap, int);
            emit_number(&o, v < 0 ? -(uint64_t)v : (uint64_t)v, v < 0, 10, 0, width, left, pad);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            uint64_t v = longs ? va_arg(ap, unsigned long) : va_arg(ap, unsigned);
            emit_number(&o, v, 0, *fmt == 'u' ? 10 : 16, *fmt == 'X', width, left, pad);
            break;
        }
        case 'p':
            emit(&o, '0');
            emit(&o, 'x');
            emit_number(&o, (uintptr_t)va_arg(ap, void *), 0, 16, 0, width, left, pad);
            break;
        case 'c': {
            char c = (char)va_arg(ap, int);
            emit_padded(&o, &c, 1, width, left, ' ');
            break;
        }
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            emit_padded(&o, s, strlen(s), width, left, ' ');
            break;
        }
        case '%':
            emit(&o, '%');
            break;
        case '\0':                   /* a lone '%' at the end */
            fmt--;
            break;
        default:                     /* unknown: show it rather than guess */
            emit(&o, '%');
            emit(&o, *fmt);
            break;
        }
    }
    if (size)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return (int)o.len;
}

/* ---- stopping ---- */

_Noreturn void rt_exit(int status)
{
    rt_outl(RT_PORT_EXIT, (uint32_t)status);
    for (;;)                         /* the VM is gone; nothing runs after this */
        rt_pause();
}

_Noreturn void rt_park(void)
{
    rt_outb(RT_PORT_PARK, 0);
    for (;;)
        rt_pause();
}

/* ---- barrier ---- */

/* ---- events and barriers ---- */

#ifndef RT_SPIN_CYCLES
#define RT_SPIN_CYCLES 50000                 /* about 20 us of spinning, then sleep */
#endif

/* No lost wake-up: the setter stores the value, then reads the sleepers; a
 * waiter adds itself to the sleepers, then reads the value. Both pairs are
 * separated by full fences, so at least one side sees the other's write. */
void rt_event_set(rt_event_t *e, uint64_t value)
{
    __atomic_store_n(&e->value, value, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&e->sleepers, __ATOMIC_SEQ_CST))
        return;
    uint64_t sleepers = __atomic_exchange_n(&e->sleepers, 0, __ATOMIC_SEQ_CST);
    for (; sleepers; sleepers &= sleepers - 1)
        rt_send_ipi((unsigned)__builtin_ctzll(sleepers), RT_WAKE_VECTOR);
}

uint64_t rt_event_wait(rt_event_t *e, uint64_t old)
{
    uint64_t start = rt_rdtsc(), v;
    while ((v = __atomic_load_n(&e->value, __ATOMIC_ACQUIRE)) == old) {
        if (rt_rdtsc() - start < RT_SPIN_CYCLES) {
            rt_pause();
            continue;
        }
        /* A stale wake-up (meant for an earlier wait) costs one more turn. */
        uint64_t me = 1ull << rt_cpu();
        __atomic_or_fetch(&e->sleepers, me, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&e->value, __ATOMIC_SEQ_CST) != old) {
            /* Changed meanwhile: the setter may have missed our bit, so take
             * it back rather than leave a stale wake-up for the next set. */
            __atomic_and_fetch(&e->sleepers, ~me, __ATOMIC_SEQ_CST);
            continue;
        }
        rt_wait_irq();
    }
    return v;
}

void rt_barrier_wait(rt_barrier_t *b, unsigned n)
{
    uint64_t gen = __atomic_load_n(&b->generation.value, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == n) {
        /* Last to arrive: reset before releasing, so a fast vCPU that
         * re-enters at once counts into the next round. */
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        rt_event_set(&b->generation, gen + 1);
        return;
    }
    rt_event_wait(&b->generation, gen);
}

void rt_barrier(void) { rt_barrier_wait(&all_cpus_barrier, rt_ncpus); }

uint32_t rt_median(uint32_t *v, unsigned n)
{
    /* Shell sort: no recursion and no scratch memory, for guests with small stacks. */
    for (unsigned gap = n / 2; gap > 0; gap /= 2)
        for (unsigned i = gap; i < n; i++)
            for (unsigned j = i; j >= gap && v[j - gap] > v[j]; j -= gap) {
                uint32_t t = v[j];
                v[j] = v[j - gap];
                v[j - gap] = t;
            }
    return v[n / 2];
}

void rt_shuffle(uint32_t *order, unsigned n, uint64_t seed)
{
    uint64_t x = seed ? seed : 1; /* xorshift never leaves 0 */
    for (unsigned i = 0; i < n; i++)
        order[i] = i;
    for (unsigned i = n ? n - 1 : 0; i > 0; i--) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        unsigned j = (unsigned)(x % (i + 1));
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* ---- entry from crt0.S, at CPL3 ---- */

_Noreturn void rt_start(unsigned cpu, unsigned ncpus, unsigned long ram);

_Noreturn void rt_start(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    /* Each vCPU needs these before its first rt_barrier() and cannot wait
     * for vCPU 0 yet, so all store them; only the first has to write. */
    if (rt_ncpus != ncpus)
        rt_ncpus = ncpus;
    if (rt_ram != ram)
        rt_ram = ram;
    main(cpu, ncpus, ram);
    rt_park();
}
