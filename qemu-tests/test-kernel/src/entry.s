// The test kernel's arm64 Image header and entry (Linux
// Documentation/arch/arm64/booting.rst): x0 = DTB, MMU off.
    .section .text.head, "ax"
    .global _start
_start:
    b       1f
    .word   0
    .quad   0                   // text_offset
    .quad   __image_size        // image_size
    .quad   0xa                 // flags: LE, 4 KiB pages, placement anywhere
    .quad   0, 0, 0
    .ascii  "ARM\x64"
    .word   0
1:  mov     x19, x0
    mov     x20, x1
    mov     x21, x2
    mov     x22, x3
    mov     x1, #(3 << 20)      // CPACR_EL1.FPEN: FP/SIMD for Rust code
    msr     cpacr_el1, x1
    mrs     x1, CurrentEL
    cmp     x1, #(2 << 2)
    b.ne    2f
    mov     x1, #0x33ff         // CPTR_EL2: TFP clear
    msr     cptr_el2, x1
2:  isb
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
3:  cmp     x1, x2
    b.hs    4f
    stp     xzr, xzr, [x1], #16
    b       3b
4:  ldr     x1, =__stack_top
    mov     sp, x1
    adr     x0, _start          // where we actually run
    mov     x1, x19             // DTB
    orr     x2, x20, x21        // x1..x3 must be zero
    orr     x2, x2, x22
    bl      test_kernel_main
5:  wfe
    b       5b
    .ltorg
