/*
 * The ivyvm guest runtime: what every program in guest/programs/ builds on.
 *
 * crt0.S runs at CPL0 only long enough to load this runtime's GDT, per-vCPU
 * TSS and IDT, then enters CPL3 (IOPL 3, IF 1) and calls
 *     int main(unsigned cpu, unsigned ncpus, unsigned long ram);
 * CPL0 is emulated on the hosts ivyvm targets (about 2.5 us an instruction)
 * while CPL3 runs natively, so all real work happens at CPL3 and only the
 * interrupt handlers go back to CPL0. When main returns the vCPU parks; the
 * VM's exit status is the program's business (rt_exit).
 *
 * The constants below are shared with crt0.S and link.ld (via the ASSERTs
 * there), hence the __ASSEMBLER__ split.
 */
#ifndef IVYVM_RT_H
#define IVYVM_RT_H

#define RT_MAX_CPUS       64          /* one GDT slot and TSS per vCPU */
#define RT_PAGE_SIZE      0x1000
#define RT_IMAGE_BASE     0x200000    /* link.ld places the image here */
/* The interrupt stubs and the TSS block sit at fixed addresses so that the
 * assembler can emit the IDT and GDT as finished static data: a relocation
 * cannot split an address into a descriptor's scattered fields. */
#define RT_ISR_BASE       RT_IMAGE_BASE               /* 256 stubs, 16 bytes each */
#define RT_ISR_STUB_SIZE  16
#define RT_TSS_BASE       (RT_IMAGE_BASE + 0x1000)   /* RT_MAX_CPUS slots, then the I/O bitmap */
#define RT_TSS_SLOT       128
#define RT_IOMAP_SIZE     0x2000                      /* one bit per port 0..0xffff */
#define RT_STACK_SIZE     0x10000     /* per vCPU, assigned by the VMM (guest ABI 2) */
/* The top page of each vCPU's stack holds its interrupt counters (and its
 * index, in the last 8 bytes); TSS.RSP0 is the bottom of that page, and the
 * interrupt stack runs down from there to RT_IRQ_STACK_SIZE below the top,
 * where the CPL3 stack begins. See crt0.S. */
#define RT_IRQ_AREA       0x1000
#define RT_IRQ_TOTAL_OFF  0           /* from RSP0: all deliveries, then */
#define RT_IRQ_COUNT_OFF  8           /* one counter per vector 0..255 */
#define RT_IRQ_STACK_SIZE 0x2000
/* Reserved for waking vCPUs that sleep in a barrier; not counted in
 * rt_irq_total, so programs can still check their own interrupts exactly. */
#define RT_WAKE_VECTOR    0x20
#define RT_SEL_KCODE      0x08        /* selectors match the VMM's boot GDT (guest ABI 3) */
#define RT_SEL_KDATA      0x10
#define RT_SEL_UCODE      0x18
#define RT_SEL_UDATA      0x20
#define RT_SEL_TSS0       0x28        /* vCPU i's TSS descriptor: RT_SEL_TSS0 + 16 * i */

/* Ports of guest ABI section 4. */
#define RT_PORT_CONSOLE   0x3f8
#define RT_PORT_EXIT      0xf4
#define RT_PORT_PARK      0xf5
#define RT_PORT_IPI       0xf6
#define RT_PORT_WAIT_IRQ  0xf7

#ifndef __ASSEMBLER__

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* On a struct type: every object of it, array elements included, has whole
 * pages to itself. Under the DSM (guest ABI 8) data written by different
 * vCPUs must not share a page, or each write drags the page between nodes.
 * (On a variable it only aligns the start; the next variable may follow on
 * the same page, hence rt_page_u64.) */
#define RT_PAGE_ALIGNED __attribute__((aligned(RT_PAGE_SIZE)))

typedef struct { volatile uint64_t v; } RT_PAGE_ALIGNED rt_page_u64;

/* Set before main runs. */
extern unsigned rt_ncpus;
extern unsigned long rt_ram;

/* ---- port I/O (allowed at CPL3: IOPL 3 and an all-zero TSS I/O bitmap) ---- */

static inline void rt_outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port) : "memory"); }
static inline void rt_outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port) : "memory"); }
static inline uint8_t rt_inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

/* ---- console: lines from different vCPUs never mix ---- */

void rt_putc(char c);                          /* one raw byte, no lock */
void rt_puts(const char *s);                   /* the whole string under the console lock */
/* Formats into a 256-byte buffer, then prints it whole under the console
 * lock. Conversions: %d %i %u %x %X %c %s %p %%, length l/ll/z, flags 0 and -,
 * a width. */
void rt_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int rt_snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int rt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* ---- stopping ---- */

_Noreturn void rt_exit(int status);            /* stops the whole VM with status & 0xff */
_Noreturn void rt_park(void);                  /* this vCPU never runs again */

/* ---- timing and ordering ---- */

static inline uint64_t rt_rdtsc(void)
{
    uint32_t lo, hi;
    /* lfence keeps earlier loads from drifting past the timestamp. */
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi) :: "memory");
    return ((uint64_t)hi << 32) | lo;
}
static inline void rt_pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void rt_mfence(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void rt_compiler_barrier(void) { __asm__ volatile("" ::: "memory"); }

/* ---- atomics (lock-prefixed or xchg, sequentially consistent) ---- */

static inline uint64_t rt_atomic_add(volatile uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t rt_atomic_load(const volatile uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void rt_atomic_store(volatile uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t rt_atomic_xchg(volatile uint64_t *p, uint64_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
static inline int rt_atomic_cas(volatile uint64_t *p, uint64_t expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

/* ---- spinlock: test-and-test-and-set on xchg ---- */

typedef struct { volatile uint32_t locked; } rt_spinlock_t;
#define RT_SPINLOCK_INIT { 0 }

static inline int rt_spin_trylock(rt_spinlock_t *l) { return __atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE) == 0; }
static inline void rt_spin_lock(rt_spinlock_t *l)
{
    while (!rt_spin_trylock(l))
        while (__atomic_load_n(&l->locked, __ATOMIC_RELAXED))
            rt_pause();            /* spin on a read-shared copy, not with xchg */
}
static inline void rt_spin_unlock(rt_spinlock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE); }

/* ---- events: wait for a word to change without hogging a host CPU ----
 * A waiter spins briefly, then sleeps in port 0xf7 until the setter sends it
 * RT_WAKE_VECTOR. Pure spinning is ruinous when a host runs more vCPUs than
 * it has cores (measured: a 4-vCPU barrier on 2 cores took 18 ms instead of
 * 0.2 ms), and across nodes the DSM threads need those cores too. The value
 * and the sleepers each have a page: under the DSM, waiters spin on a shared
 * copy of the value, and a setter with nobody asleep only reads the other. */
typedef struct {
    volatile uint64_t value RT_PAGE_ALIGNED;
    volatile uint64_t sleepers RT_PAGE_ALIGNED;   /* bit i: vCPU i sleeps */
} rt_event_t;

void rt_event_set(rt_event_t *e, uint64_t value);   /* store (a full fence), wake sleepers */
uint64_t rt_event_wait(rt_event_t *e, uint64_t old); /* until value != old; returns it */

/* ---- barrier ----
 * Sense-reversing, with the sense kept as a generation number (an event) so
 * no per-vCPU state is needed. */
typedef struct {
    volatile uint64_t arrived RT_PAGE_ALIGNED;
    rt_event_t generation;
} rt_barrier_t;

void rt_barrier_wait(rt_barrier_t *b, unsigned n);
void rt_barrier(void);                         /* all vCPUs of this VM */

/* order[0..n) becomes a permutation of 0..n-1 fixed by seed (Fisher-Yates on
 * xorshift64): guests that walk pages out of order get the same order every run. */
void rt_shuffle(uint32_t *order, unsigned n, uint64_t seed);
/* The median of v[0..n), n > 0; sorts v in place (the samples are not needed in order afterwards). */
uint32_t rt_median(uint32_t *v, unsigned n);

/* ---- interrupts ---- */

/* This vCPU's index, from the stack pointer: runtime code always runs on the
 * vCPU's own 64 KiB stack, which ends at rt_ram - index * 64 KiB. */
static inline unsigned rt_cpu(void)
{
    uintptr_t sp;
    __asm__("mov %%rsp, %0" : "=r"(sp));
    return (unsigned)((rt_ram - sp) / RT_STACK_SIZE);
}

static inline void rt_send_ipi(unsigned target, unsigned vector) { rt_outl(RT_PORT_IPI, (vector << 8) | target); }
/* Returns at once if an interrupt arrived since the previous call, else sleeps
 * until one is queued; the interrupt itself is taken by the handler (IF is 1
 * at CPL3). Use as: while (!condition) rt_wait_irq(); */
static inline void rt_wait_irq(void) { rt_outb(RT_PORT_WAIT_IRQ, 0); }
/* Deliveries to vCPU `cpu` of one vector / of all vectors 32..255. The
 * counters live on that vCPU's own stack page (written only by its handler,
 * at CPL0); any vCPU may read them. */
static inline volatile uint64_t *rt_irq_counters(unsigned cpu)
{
    return (volatile uint64_t *)(rt_ram - (uintptr_t)cpu * RT_STACK_SIZE - RT_IRQ_AREA);
}
static inline uint64_t rt_irq_count(unsigned cpu, unsigned vector) { return rt_irq_counters(cpu)[(RT_IRQ_COUNT_OFF / 8) + (vector & 0xff)]; }
static inline uint64_t rt_irq_total(unsigned cpu) { return rt_irq_counters(cpu)[RT_IRQ_TOTAL_OFF / 8]; }

/* ---- memory ---- */

extern char _end[];                            /* end of the image, from link.ld */

/* Free guest memory (zero at boot, guest ABI 2): [rt_free_start, rt_free_end). */
static inline uintptr_t rt_free_start(void) { return ((uintptr_t)_end + RT_PAGE_SIZE - 1) & ~(uintptr_t)(RT_PAGE_SIZE - 1); }
static inline uintptr_t rt_free_end(void) { return rt_ram - (uintptr_t)rt_ncpus * RT_STACK_SIZE; }

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* ---- program entry points ---- */

int main(unsigned cpu, unsigned ncpus, unsigned long ram);
/* Optional: called on every vCPU at CPL0, after the runtime's tables are
 * loaded and before the drop to CPL3 (rt_ncpus and rt_ram are not set yet).
 * Only for programs that must do something privileged (faulty_triple);
 * every instruction here is emulated. It must leave IF = 0: the interrupt
 * stubs count on interrupts arriving only at CPL3. */
void rt_cpl0_hook(unsigned cpu) __attribute__((weak));

#endif /* __ASSEMBLER__ */
#endif /* IVYVM_RT_H */
