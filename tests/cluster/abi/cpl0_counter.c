/* Written from docs/guest-abi.md alone: CPL0 only, no runtime. */
typedef unsigned long u64; typedef unsigned int u32; typedef unsigned short u16; typedef unsigned char u8;
static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0,%1" :: "a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1,%0" : "=a"(v) : "Nd"(p)); return v; }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0,%1" :: "a"(v), "Nd"(p)); }
volatile u64 counter, arrived;
static void putc_(char c) { while (!(inb(0x3fd) & 0x20)) ; outb(0x3f8, c); }
static void puts_(const char *s) { while (*s) putc_(*s++); }
static void putu(u64 v) { char b[24]; int i = 0; do b[i++] = '0' + v % 10; while (v /= 10); while (i) putc_(b[--i]); }
void cmain(u64 cpu, u64 ncpus, u64 ram) {
  for (int i = 0; i < ROUNDS; i++) __atomic_fetch_add(&counter, 1, __ATOMIC_SEQ_CST);
  __atomic_fetch_add(&arrived, 1, __ATOMIC_SEQ_CST);
  if (cpu != 0) { for (;;) __asm__ volatile("hlt"); }   /* IF=0: parks */
  while (arrived < ncpus) ;
  puts_("abi counter="); putu(counter); puts_(" ram="); putu(ram >> 20); puts_("M\n");
  outl(0xf4, counter == ncpus * ROUNDS ? 0 : 1);
}
__asm__(".globl _start\n_start: call cmain\n1: hlt\n jmp 1b\n");
