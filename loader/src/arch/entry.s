// zboot entry: the arm64 Image header, then the boot CPU's path into Rust.
//
// Facts used (Linux Documentation/arch/arm64/booting.rst, "Call the kernel
// image"): the header is 64 bytes: code0/code1, text_offset, image_size,
// flags, three reserved quads, the magic "ARM\x64" at 0x38 and a reserved
// word; a loader that finds a non-zero image_size places the image at a
// 2 MiB-aligned base + text_offset and enters at its first byte with
// x0 = physical address of the DTB, MMU off, at EL2 (preferred) or EL1.

    .section .text.head, "ax"
    .global _start
_start:
    b       primary_entry               // code0: branch over the header
    .word   0                           // code1
    .quad   0                           // text_offset: load at a 2 MiB boundary
    .quad   __image_size                // image_size: file + .bss + stack
    .quad   0x2                         // flags: little endian, 4 KiB pages
    .quad   0                           // res2
    .quad   0                           // res3
    .quad   0                           // res4
    .ascii  "ARM\x64"                   // magic
    .word   0                           // res5 (PE/COFF offset: none)

primary_entry:
    msr     daifset, #0xf               // no interrupts: zboot polls
    mov     x19, x0                     // DTB pointer from the boot loader

    // Only the boot CPU (MPIDR_EL1.Aff0 == 0) runs zboot. Firmware normally
    // keeps the others in its spin table; any that get here are parked.
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    cbnz    x1, park_cpu

    // Code is linked for ZBOOT_LOAD_ADDRESS; running anywhere else would
    // corrupt memory on the first absolute address. Say so and stop.
    adr     x1, _start
    ldr     x2, =_start
    cmp     x1, x2
    b.ne    wrong_load_address

    mrs     x20, CurrentEL
    ubfx    x20, x20, #2, #2            // CurrentEL.EL, kept for Rust
    cmp     x20, #3
    b.eq    from_el3
    cmp     x20, #2
    b.eq    at_el2
    cmp     x20, #1
    b.eq    at_el1
    b       park_cpu                    // EL0: impossible from a boot loader

from_el3:
    // Drop to EL2 as the Pi's armstub does: non-secure, EL2 AArch64, HVC on.
    // SCR_EL3: NS (bit 0), RES1 (bits 5:4), HCE (bit 8), RW (bit 10).
    mov     x1, #0x0531
    msr     scr_el3, x1
    msr     cptr_el3, xzr               // no FP/SIMD traps to EL3
    // SCTLR_EL2: RES1 bits only (MMU, caches and alignment checks off).
    ldr     x1, =0x30c50830
    msr     sctlr_el2, x1
    // SPSR_EL3: D, A, I, F masked; M = EL2h.
    mov     x1, #0x3c9
    msr     spsr_el3, x1
    adr     x1, at_el2
    msr     elr_el3, x1
    eret

at_el2:
    // CPTR_EL2 (non-VHE layout): RES1 bits 13:12 and 9:0, TFP (bit 10) = 0
    // so FP/SIMD does not trap; Rust code uses SIMD registers freely.
    mov     x1, #0x33ff
    msr     cptr_el2, x1
    // CPACR_EL1.FPEN = 0b11 as well, for whatever runs at EL1 after us.
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    adr     x1, zboot_vectors
    msr     vbar_el2, x1
    isb
    b       zero_bss

at_el1:
    mov     x1, #(3 << 20)              // CPACR_EL1.FPEN: no FP/SIMD traps
    msr     cpacr_el1, x1
    adr     x1, zboot_vectors
    msr     vbar_el1, x1
    isb

zero_bss:
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16         // both ends are 16-byte aligned
    b       1b
2:
    ldr     x1, =__stack_top
    mov     sp, x1
    mov     x29, xzr                    // end of the frame-pointer chain
    mov     x30, xzr
    mov     x0, x19                     // DTB pointer
    mov     x1, x20                     // exception level at entry
    bl      zboot_rust_entry            // never returns

park_cpu:
    wfe
    b       park_cpu

// Print a fixed message on the PL011 without any Rust (nothing is set up),
// position-independently, then park. The FIFO wait is bounded so an
// unclocked UART cannot hang us before we park anyway.
wrong_load_address:
    adr     x1, wrong_address_message
    ldr     x2, =0xfe201000             // PL011 UART0 (BCM2711 low-peripheral map)
3:  ldrb    w3, [x1], #1
    cbz     w3, park_cpu
    mov     x4, #0x10000                // bounded wait for TX FIFO space
4:  ldr     w5, [x2, #0x18]             // UARTFR
    tbz     w5, #5, 5f                  // TXFF clear: room in the FIFO
    subs    x4, x4, #1
    b.ne    4b
5:  str     w3, [x2]                    // UARTDR
    b       3b

wrong_address_message:
    .asciz  "\r\nzboot: loaded at the wrong address; expected 0x200000 (config.txt: do not set kernel_address)\r\n"
    .balign 4
    .ltorg
