/*
 * The CPL0 part of the starter guest: about 60 instructions per vCPU, then
 * CPL3 for good. Written from docs/guest-abi.md (sections 3 and 6) alone.
 *
 * Why assembly: at entry there is no usable stack frame convention to rely
 * on yet, the descriptor tables must be loaded with lgdt/ltr/lidt, and the
 * only way down to CPL3 is an iretq with a hand-built frame. None of that can
 * be expressed in C, and on nested hosts every CPL0 instruction is emulated
 * (microseconds each), so the less of it the better.
 *
 * Entry state (ABI 3): CPL0, IF = 0, rdi = vCPU index, rsi = vCPU count,
 * rdx = RAM size, rsp = top of this vCPU's 64 KiB stack.
 *
 * This vCPU's 64 KiB stack, from the top down:
 *   top .. top-8 KiB   CPL0 stack for exceptions and interrupts (TSS.RSP0)
 *   top-8 KiB .. end   the CPL3 stack main() runs on
 */

#define MAX_CPUS     16                 /* one TSS and one GDT slot each */
#define TSS_SIZE     104                /* a 64-bit TSS */
#define IOMAP_BYTES  8192               /* one bit per port 0..0xffff */
#define CPL0_STACK   8192
#define SEL_KCODE    0x08               /* the VMM's selectors (ABI 3), repeated below */
#define SEL_UCODE    0x18
#define SEL_UDATA    0x20
#define SEL_TSS0     0x28               /* vCPU i's TSS: SEL_TSS0 + 16 * i */
#define PORT_CONSOLE 0x3f8
#define PORT_EXIT    0xf4
#define PORT_PARK    0xf5

    .section .text.entry, "ax"
    .globl _start
_start:
    cmp $MAX_CPUS, %rsi
    ja too_many_cpus
    mov %rdi, %r12                      /* main's arguments; iretq keeps registers */
    mov %rsi, %r13
    mov %rdx, %r14

    /* This vCPU's TSS: RSP0 and the offset of the shared I/O bitmap. */
    imul $TSS_SIZE, %rdi, %rbx
    add $tss, %rbx
    mov %rsp, 4(%rbx)                   /* RSP0: exceptions land at the stack top */
    mov $iomap, %eax
    sub %ebx, %eax                      /* iomap_base, < 64 KiB */
    mov %ax, 102(%rbx)

    /* Its 16-byte GDT descriptor: limit = iomap_base + IOMAP_BYTES, so the
     * 0xff terminator after the bitmap is the last byte inside the limit.
     * The bitmap must exist although IOPL is 3: nested hosts consult it. */
    lea IOMAP_BYTES(%rax), %ecx         /* limit 15:0 (bits 19:16 are 0) */
    mov %ebx, %edx
    and $0xffffff, %edx
    shl $16, %rdx                       /* base 23:0 at bits 16..39 */
    or %rcx, %rdx
    mov $0x89, %eax                     /* present, DPL0, 64-bit TSS (available) */
    shl $40, %rax
    or %rax, %rdx
    mov %ebx, %eax
    shr $24, %eax
    shl $56, %rax                       /* base 31:24 */
    or %rax, %rdx
    mov %rdi, %rax
    shl $4, %rax
    mov %rdx, gdt_tss(%rax)
    movq $0, gdt_tss+8(%rax)            /* base 63:32: the image is below 4 GiB */

    lgdt gdt_ptr                        /* same code/data descriptors: no reload */
    lea SEL_TSS0(%rax), %eax
    ltr %ax

    /* IDT: every vector to one handler (a 64-bit DPL0 interrupt gate). Every
     * vCPU writes the same bytes; the table must be complete before the
     * first exception this vCPU could take. */
    mov $on_exception, %eax
    mov %eax, %edx
    and $0xffff, %edx                   /* offset 15:0 */
    or $(SEL_KCODE << 16), %edx
    mov $0x8e, %ecx                     /* present, DPL0, interrupt gate */
    shl $40, %rcx
    or %rcx, %rdx
    shr $16, %eax
    shl $48, %rax                       /* offset 31:16 */
    or %rax, %rdx
    lea idt, %rdi
    mov $256, %ecx
1:  mov %rdx, (%rdi)
    movq $0, 8(%rdi)
    add $16, %rdi
    dec %ecx
    jnz 1b
    lidt idt_ptr

    /* Down to CPL3 with IF = 1 and IOPL = 3 in one iretq: on nested hosts
     * sti faults at CPL3 even with IOPL 3, so IF must come from here. */
    lea -CPL0_STACK(%rsp), %rax
    pushq $(SEL_UDATA | 3)              /* SS */
    pushq %rax                          /* RSP */
    pushq $0x3202                       /* RFLAGS: IF | IOPL 3 */
    pushq $(SEL_UCODE | 3)              /* CS */
    pushq $at_cpl3                      /* RIP */
    iretq

at_cpl3:
    mov %r12, %rdi
    mov %r13, %rsi
    mov %r14, %rdx
    call main                           /* returns the vCPU's verdict in eax */
    test %r12, %r12
    jnz park
    mov $PORT_EXIT, %edx                /* vCPU 0: its verdict is the VM's status */
    out %eax, %dx
park:
    mov $PORT_PARK, %edx                /* any other vCPU: never runs again */
    out %al, %dx
    jmp park

/* Any exception or interrupt: one line and status 1. Runs at CPL0. */
on_exception:
    lea msg_exception, %rsi
    jmp say_and_fail
too_many_cpus:
    test %rdi, %rdi
    jnz park                            /* vCPU 0 says it once; at CPL0 port 0xf5 works too */
    lea msg_too_many, %rsi
say_and_fail:
    mov $PORT_CONSOLE, %edx
2:  lodsb
    test %al, %al
    jz 3f
    out %al, %dx
    jmp 2b
3:  mov $1, %eax
    mov $PORT_EXIT, %edx
    out %eax, %dx
    jmp park

    .section .rodata
msg_exception: .asciz "starter: unexpected exception or interrupt\n"
msg_too_many:  .asciz "starter: more vCPUs than MAX_CPUS in start.S\n"

    .data
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9b000000ffff            /* 0x08 64-bit code, DPL0 (Accessed preset: */
    .quad 0x00cf93000000ffff            /* 0x10 data, DPL0          the CPU never */
    .quad 0x00affb000000ffff            /* 0x18 64-bit code, DPL3   writes the GDT) */
    .quad 0x00cff3000000ffff            /* 0x20 data, DPL3 */
gdt_tss:
    .fill MAX_CPUS * 2, 8, 0            /* filled in at boot, one per vCPU */
gdt_end:
    .balign 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
idt_ptr:
    .word 256 * 16 - 1
    .quad idt

/* The TSSs, then the one I/O bitmap they all share (all zero: every port
 * allowed), then the terminating 0xff byte the architecture asks for. */
    .balign 16
tss:
    .fill MAX_CPUS * TSS_SIZE, 1, 0
iomap:
    .fill IOMAP_BYTES, 1, 0
    .byte 0xff

    .bss
    .balign 16
idt:
    .skip 256 * 16

    .section .note.GNU-stack, "", @progbits
