/*
 * The starter guest's program, at CPL3 on every vCPU: each greets on the
 * console, then vCPU 0 waits for all of them and prints a verdict. The value
 * main returns on vCPU 0 becomes ivyvm's exit status (start.S writes it to
 * port 0xf4); other vCPUs park when main returns.
 */
typedef unsigned long u64;
typedef unsigned short u16;
typedef unsigned char u8;

static inline void outb(u16 port, u8 value) { __asm__ volatile("outb %0, %1" :: "a"(value), "Nd"(port)); }

static volatile u8 console_lock;
static volatile u64 arrived;
static volatile u64 not_at_cpl3;

/* Bytes of different vCPUs may interleave on the console (ABI 4): one line at a time. */
static void lock(void) { while (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE)) ; }
static void unlock(void) { __atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE); }

static void put(const char *s) { while (*s) outb(0x3f8, (u8)*s++); }

static void put_u(u64 value)
{
    char digits[24];
    int n = 0;
    do digits[n++] = (char)('0' + value % 10); while (value /= 10);
    while (n) outb(0x3f8, (u8)digits[--n]);
}

static int cpl(void)
{
    u64 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    return cs & 3;          /* the selector itself may read as the host's own (ABI 6) */
}

int main(u64 cpu, u64 ncpus, u64 ram)
{
    if (cpl() != 3)
        __atomic_add_fetch(&not_at_cpl3, 1, __ATOMIC_SEQ_CST);
    lock();
    put("hello from vCPU "); put_u(cpu); put(" of "); put_u(ncpus); put(" at CPL"); put_u(cpl()); put("\n");
    unlock();
    __atomic_add_fetch(&arrived, 1, __ATOMIC_SEQ_CST);
    if (cpu != 0)
        return 0;
    while (arrived < ncpus)
        ;
    int ok = not_at_cpl3 == 0;
    put(ok ? "PASS" : "FAIL"); put(" starter: "); put_u(ncpus); put(" vCPUs, ");
    put_u(ram >> 20); put(" MiB\n");
    return ok ? 0 : 1;
}
