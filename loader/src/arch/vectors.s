// Exception vectors: every exception is fatal in zboot (it polls, it never
// enables interrupts), so each entry saves the general registers and hands
// them to the Rust fault report, which resets the board.
//
// Layout (Arm ARM D1.10.2): 16 entries of 0x80 bytes, table aligned to 2 KiB:
// {current EL with SP0, current EL with SPx, lower EL AArch64, lower EL
// AArch32} x {synchronous, IRQ, FIQ, SError}.

    .equ    FRAME_SIZE, 256             // x0..x30 and the interrupted SP

.macro VECTOR_ENTRY kind
    .balign 0x80
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0x00]
    stp     x2, x3, [sp, #0x10]
    stp     x4, x5, [sp, #0x20]
    stp     x6, x7, [sp, #0x30]
    stp     x8, x9, [sp, #0x40]
    stp     x10, x11, [sp, #0x50]
    stp     x12, x13, [sp, #0x60]
    stp     x14, x15, [sp, #0x70]
    stp     x16, x17, [sp, #0x80]
    stp     x18, x19, [sp, #0x90]
    stp     x20, x21, [sp, #0xa0]
    stp     x22, x23, [sp, #0xb0]
    stp     x24, x25, [sp, #0xc0]
    stp     x26, x27, [sp, #0xd0]
    stp     x28, x29, [sp, #0xe0]
    mov     x1, #\kind
    b       exception_common
.endm

    .section .text.vectors, "ax"
    .balign 2048
    .global zboot_vectors
zboot_vectors:
    VECTOR_ENTRY 0
    VECTOR_ENTRY 1
    VECTOR_ENTRY 2
    VECTOR_ENTRY 3
    VECTOR_ENTRY 4
    VECTOR_ENTRY 5
    VECTOR_ENTRY 6
    VECTOR_ENTRY 7
    VECTOR_ENTRY 8
    VECTOR_ENTRY 9
    VECTOR_ENTRY 10
    VECTOR_ENTRY 11
    VECTOR_ENTRY 12
    VECTOR_ENTRY 13
    VECTOR_ENTRY 14
    VECTOR_ENTRY 15

exception_common:
    add     x0, sp, #FRAME_SIZE         // the SP before the exception
    stp     x30, x0, [sp, #0xf0]
    mov     x0, sp                      // &TrapFrame
    bl      zboot_exception             // prints the report, never returns
1:  wfe
    b       1b
