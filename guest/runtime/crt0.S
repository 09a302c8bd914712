/*
 * Guest entry, descriptor tables and interrupt handlers.
 *
 * Everything here that runs at CPL0 is emulated on the target hosts (about
 * 2.5 us an instruction), so the tables are finished static data built by the
 * assembler, and boot does only what depends on the vCPU: store RSP0, ltr,
 * then iretq to CPL3. About 25 instructions per vCPU.
 *
 * Entry state (guest ABI 3): CPL0, rdi = vCPU index, rsi = vCPU count,
 * rdx = RAM size, rsp = top of this vCPU's 64 KiB stack, IF = 0.
 *
 * Each vCPU's 64 KiB stack (from the VMM) is laid out from the top down:
 *   top-8            this vCPU's index, for the exception report
 *   top-4096         the interrupt counters (see rt.h), then
 *                    TSS.RSP0: the interrupt stack grows down from here
 *   top-8192         the CPL3 stack, down to the bottom of the 64 KiB
 * The VMM's stacks are 64 KiB aligned (RAM is a multiple of 2 MiB), so the
 * exception handler finds the index from any rsp in the stack as
 * (rsp | 0xffff) - 7. The interrupt handler needs no lookup at all: an
 * interrupt always arrives at CPL3 (CPL0 code runs with IF = 0), so the CPU
 * has just pushed its 5-word frame below RSP0 and the counters sit at a fixed
 * offset from rsp. That keeps the emulated CPL0 path to three instructions.
 */
#include "rt.h"

#define CPU_SLOT    (-8)            /* relative to the stack top */
#define IRQ_FRAME   40              /* ss, rsp, rflags, cs, rip */

/* ------------------------------------------------------------------------ */
/* Interrupt stubs, one per vector, at RT_ISR_BASE + 16 * vector (link.ld   */
/* checks the address). Exceptions go on to the report with [rsp] = vector, */
/* [rsp+8] = error code; vectors 32..255 are counted right in their stub.   */

    .section .rt_isr, "ax"
    .globl rt_isr_stubs
rt_isr_stubs:
    .set vec, 0
    .rept 256
    .balign RT_ISR_STUB_SIZE, 0xcc
    /* The CPU pushes an error code only for these vectors; push a zero for
     * the others so the exception frame has one shape. */
    .if vec < 32
    .if vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30
    .else
    pushq $0
    .endif
    pushq $vec
    jmp exception_common
    .else
    /* No EOI (guest ABI 5); only this vCPU writes its counters, so no lock. */
    incq (IRQ_FRAME + RT_IRQ_COUNT_OFF + vec * 8)(%rsp)
    .if vec != RT_WAKE_VECTOR
    incq (IRQ_FRAME + RT_IRQ_TOTAL_OFF)(%rsp)
    .endif
    iretq
    .endif
    .set vec, vec + 1
    .endr
    .balign RT_ISR_STUB_SIZE, 0xcc
rt_isr_stubs_end:

/* ------------------------------------------------------------------------ */
/* TSS block at RT_TSS_BASE: RT_MAX_CPUS 104-byte TSSs in 128-byte slots,   */
/* then ONE shared I/O bitmap. Every TSS's iomap_base reaches forward to    */
/* that bitmap, so they overlap; that is fine in 64-bit mode, where the CPU */
/* only ever reads a TSS. The bitmap must exist even though IOPL is 3: the  */
/* target hosts consult it anyway. All zero = every port allowed.           */

    .section .rt_tss, "aw"
    .globl rt_tss
rt_tss:
    .set cpu, 0
    .rept RT_MAX_CPUS
    .long 0                                         /* reserved */
    .quad 0                                         /* RSP0: stored at boot */
    .fill 11, 8, 0                                  /* RSP1, RSP2, reserved, IST1-7, reserved */
    .word 0                                         /* reserved */
    .word (RT_MAX_CPUS - cpu) * RT_TSS_SLOT         /* iomap_base: offset of rt_iomap */
    .fill RT_TSS_SLOT - 104, 1, 0
    .set cpu, cpu + 1
    .endr
rt_iomap:
    .fill RT_IOMAP_SIZE, 1, 0
    .byte 0xff                                      /* the terminator the SDM asks for */

/* ------------------------------------------------------------------------ */
/* IDT: 256 DPL0 interrupt gates to the stubs above.                        */

    .section .rodata.rt_tables, "a"
    .balign 16
rt_idt:
    .set vec, 0
    .rept 256
    .word (RT_ISR_BASE + vec * RT_ISR_STUB_SIZE) & 0xffff
    .word RT_SEL_KCODE
    .byte 0                                         /* no IST */
    .byte 0x8e                                      /* present, DPL0, 64-bit interrupt gate */
    .word (RT_ISR_BASE + vec * RT_ISR_STUB_SIZE) >> 16
    .long 0                                         /* offset 63:32: the image is below 4 GiB */
    .long 0
    .set vec, vec + 1
    .endr
rt_idt_end:

    .balign 8
rt_idt_ptr:
    .word rt_idt_end - rt_idt - 1
    .quad rt_idt

/* ------------------------------------------------------------------------ */
/* GDT: the VMM's four selectors again (Accessed preset so the CPU never    */
/* writes a descriptor), then one 16-byte TSS descriptor per vCPU. It has   */
/* a page of its own (link.ld): the CPU reads it on every interrupt and     */
/* iretq, and under the DSM a hot variable beside it would keep             */
/* invalidating every node's copy.                                          */

    .section .rt_gdt, "aw"
    .balign 16
rt_gdt:
    .quad 0
    .quad 0x00af9b000000ffff                        /* 0x08 64-bit code, DPL0 */
    .quad 0x00cf93000000ffff                        /* 0x10 data, DPL0 */
    .quad 0x00affb000000ffff                        /* 0x18 64-bit code, DPL3 */
    .quad 0x00cff3000000ffff                        /* 0x20 data, DPL3 */
    .set cpu, 0
    .rept RT_MAX_CPUS
    .set base, RT_TSS_BASE + cpu * RT_TSS_SLOT
    .set limit, (RT_MAX_CPUS - cpu) * RT_TSS_SLOT + RT_IOMAP_SIZE   /* last byte: the 0xff */
    .word limit & 0xffff
    .word base & 0xffff
    .byte (base >> 16) & 0xff
    .byte 0x89                                      /* present, 64-bit TSS, available */
    .byte (limit >> 16) & 0x0f
    .byte (base >> 24) & 0xff
    .long 0                                         /* base 63:32 */
    .long 0
    .set cpu, cpu + 1
    .endr
rt_gdt_end:

    .balign 8
rt_gdt_ptr:
    .word rt_gdt_end - rt_gdt - 1
    .quad rt_gdt

/* ------------------------------------------------------------------------ */
/* Entry.                                                                   */

    .section .text.boot, "ax"
    .globl _start
    .weak rt_cpl0_hook
_start:
    cmp $RT_MAX_CPUS, %rsi
    ja too_many_cpus
    mov %rdi, %r12                  /* keep main's arguments across the hook */
    mov %rsi, %r13
    mov %rdx, %r14

    mov %rdi, CPU_SLOT(%rsp)
    sub $RT_IRQ_AREA, %rsp          /* RSP0, just below the counters */

    mov %rdi, %rax
    shl $7, %rax                    /* * RT_TSS_SLOT */
    mov %rsp, RT_TSS_BASE + 4(%rax)

    /* The new GDT repeats the VMM's code and data descriptors, so the
     * segment registers' cached descriptors stay valid: no reload needed. */
    lgdt rt_gdt_ptr
    mov %edi, %eax
    shl $4, %eax
    add $RT_SEL_TSS0, %eax
    ltr %ax
    lidt rt_idt_ptr

    mov $rt_cpl0_hook, %eax         /* weak: 0 unless the program defines it */
    test %rax, %rax
    jz 1f
    call *%rax
1:
    /* To CPL3 with IF = 1 and IOPL = 3: sti is not allowed there on the
     * target hosts, so iretq has to set IF. */
    lea -(RT_IRQ_STACK_SIZE - RT_IRQ_AREA)(%rsp), %rax
    pushq $(RT_SEL_UDATA | 3)
    pushq %rax
    pushq $0x3202
    pushq $(RT_SEL_UCODE | 3)
    pushq $cpl3_entry
    iretq

too_many_cpus:                      /* tables have RT_MAX_CPUS slots */
    test %rdi, %rdi
    jnz 2f
    lea msg_too_many(%rip), %rsi
    call put_str
    jmp stop_with_1
2:  hlt                             /* IF = 0: parks this vCPU */
    jmp 2b

/* ------------------------------------------------------------------------ */
/* Interrupt handlers (CPL0, IF = 0, on RSP0 when coming from CPL3).        */

    .text
/* Vectors 0..31 are bugs: report and stop the VM with status 1. */
exception_common:
    mov %rsp, %rbx
    lea msg_exc(%rip), %rsi
    call put_str
    mov (%rbx), %r8
    shl $56, %r8
    mov $2, %ecx
    call put_hex
    lea msg_err(%rip), %rsi
    call put_str
    mov 8(%rbx), %r8
    mov $16, %ecx
    call put_hex
    lea msg_rip(%rip), %rsi
    call put_str
    mov 16(%rbx), %r8
    mov $16, %ecx
    call put_hex
    lea msg_cpu(%rip), %rsi
    call put_str
    mov %rbx, %rax
    or $0xffff, %rax
    mov CPU_SLOT + 1(%rax), %r8
    shl $56, %r8
    mov $2, %ecx
    call put_hex
    lea msg_nl(%rip), %rsi
    call put_str
stop_with_1:
    mov $1, %eax
    mov $RT_PORT_EXIT, %edx
    out %eax, %dx
3:  hlt
    jmp 3b

/* put_str: print the NUL-terminated string at rsi. */
put_str:
    mov $RT_PORT_CONSOLE, %edx
4:  movzbl (%rsi), %eax
    test %eax, %eax
    jz 5f
    out %al, %dx
    inc %rsi
    jmp 4b
5:  ret

/* put_hex: print the top ecx hex digits of r8. */
put_hex:
    mov $RT_PORT_CONSOLE, %edx
6:  rol $4, %r8
    mov %r8d, %eax
    and $0xf, %eax
    movzbl hex_digits(%rax), %eax
    out %al, %dx
    dec %ecx
    jnz 6b
    ret

/* CPL3 from here on. iretq keeps the general registers, but the hook may not. */
cpl3_entry:
    mov %r12, %rdi
    mov %r13, %rsi
    mov %r14, %rdx
    call rt_start                   /* never returns */
    ud2

    .section .rodata
hex_digits:   .ascii "0123456789abcdef"
msg_exc:      .asciz "\nivyvm guest runtime: exception 0x"
msg_err:      .asciz " error 0x"
msg_rip:      .asciz " rip 0x"
msg_cpu:      .asciz " vCPU 0x"
msg_nl:       .asciz "\n"
msg_too_many: .asciz "ivyvm guest runtime: more vCPUs than RT_MAX_CPUS\n"

    .section .note.GNU-stack, "", @progbits
