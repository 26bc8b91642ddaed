// Turning the MMU and caches off for a hand-off (Linux
// Documentation/arch/arm64/booting.rst: MMU off, D-cache off, the image
// cleaned to the PoC; I-cache may be on or off).
//
// zboot_caches_off_and_jump(x0 = entry, x1 = argument, x2 = exception level)
// Disables stage 1 translation and both caches at the current EL first (so
// nothing new is allocated), then cleans and invalidates every data/unified
// cache level up to the Level of Coherence by set/way, invalidates the
// I-cache and the TLBs, and branches to `entry` with x0 = argument and
// x1..x3 = 0. Uses no stack and no memory: everything stays in registers,
// because memory seen through the now-off caches is exactly what is being
// cleaned.
//
// The set/way walk follows the cache geometry registers as the Arm ARM
// describes them (CLIDR_EL1.LoC and Ctype<n>, CSSELR_EL1, CCSIDR_EL1 without
// FEAT_CCIDX, which the Cortex-A72 lacks).

    .section .text.zboot_caches_off_and_jump, "ax"
    .global zboot_caches_off_and_jump
zboot_caches_off_and_jump:
    mov     x19, x0
    mov     x20, x1
    cmp     x2, #2
    b.ne    1f
    mrs     x3, sctlr_el2
    bic     x3, x3, #(1 << 0)           // M: stage 1 translation
    bic     x3, x3, #(1 << 2)           // C: data caches
    bic     x3, x3, #(1 << 12)          // I: instruction cache
    msr     sctlr_el2, x3
    isb
    b       2f
1:  mrs     x3, sctlr_el1
    bic     x3, x3, #(1 << 0)
    bic     x3, x3, #(1 << 2)
    bic     x3, x3, #(1 << 12)
    msr     sctlr_el1, x3
    isb
2:
    dsb     sy
    mrs     x0, clidr_el1
    ubfx    w3, w0, #24, #3             // LoC
    lsl     w3, w3, #1                  // LoC as a CSSELR level field (level << 1)
    cbz     w3, 7f
    mov     w10, #0                     // current level << 1
3:  add     w2, w10, w10, lsr #1        // level * 3: Ctype<level> position
    lsr     w1, w0, w2
    and     w1, w1, #7
    cmp     w1, #2
    b.lt    6f                          // no data or unified cache here
    msr     csselr_el1, x10
    isb
    mrs     x1, ccsidr_el1
    and     w2, w1, #7
    add     w2, w2, #4                  // log2(line length in bytes)
    ubfx    w4, w1, #3, #10             // ways - 1
    clz     w5, w4                      // shift of the way field
    ubfx    w7, w1, #13, #15            // sets - 1
4:  mov     w9, w4                      // ways - 1, counting down
5:  lsl     w6, w9, w5
    orr     w11, w10, w6
    lsl     w6, w7, w2
    orr     w11, w11, w6
    dc      cisw, x11                   // clean and invalidate by set/way
    subs    w9, w9, #1
    b.ge    5b
    subs    w7, w7, #1
    b.ge    4b
6:  add     w10, w10, #2
    cmp     w3, w10
    b.gt    3b
7:  msr     csselr_el1, xzr
    dsb     sy
    isb
    ic      iallu
    mrs     x3, CurrentEL
    ubfx    x3, x3, #2, #2
    cmp     x3, #2
    b.ne    8f
    tlbi    alle2
    b       9f
8:  tlbi    vmalle1
9:  dsb     sy
    isb
    mov     x0, x20
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    br      x19
