//! A stand-in for Linux in zboot's QEMU tests: reports what it was handed, then resets.
//!
//! It prints where it runs, the exception level, whether the MMU and D-cache
//! are off, the DTB's `/chosen/bootargs` and initrd range (with a checksum of
//! the initrd), then acts on `zbtest=` from its command line: `good` and
//! `bad` both reset the board (the harness marks `good` boots good on the
//! disk image, as user space would); `hang` waits forever (for watchdog
//! tests).
#![no_std]
#![no_main]

use core::fmt::Write;

use dtoolkit::fdt::Fdt;
use dtoolkit::{Node, Property};
use hal_bcm2711::memory_map;
use hal_bcm2711::pl011::Pl011Uart;
use hal_bcm2711::pm::Watchdog;

core::arch::global_asm!(include_str!("entry.s"), options(raw));

fn uart() -> Pl011Uart {
    // SAFETY: UART0 is a PL011 at this address for the program's life; the
    // MMU is off, so the physical address is used directly. Only this CPU runs.
    unsafe { Pl011Uart::new(memory_map::PL011_UART0) }
}

macro_rules! say {
    ($($arg:tt)*) => {{
        let mut uart = uart();
        let _ = write!(uart, "test-kernel: ");
        let _ = write!(uart, $($arg)*);
        let _ = write!(uart, "\r\n");
    }};
}

fn reset() -> ! {
    let _ = uart().flush();
    // SAFETY: the PM block at this address for the program's life; a reset
    // needs no exclusivity.
    unsafe { Watchdog::new(memory_map::PM) }.reset_now()
}

fn read_u64_be(cells: &[u8]) -> Option<u64> {
    match cells.len() {
        4 => Some(u64::from(u32::from_be_bytes(cells.try_into().ok()?))),
        8 => Some(u64::from_be_bytes(cells.try_into().ok()?)),
        _ => None,
    }
}

/// What the firmware fills in, as the kernel receives it (a slot's own tree gets it
/// from zboot): the first RAM region, the board serial, the /chosen/bootloader node.
fn report_fill_ins(fdt: Fdt<'_>) {
    if let Some(property) = fdt
        .find_node("/memory")
        .and_then(|node| node.property("reg"))
    {
        let reg = property.value();
        let base = reg.get(..8).and_then(read_u64_be).unwrap_or(0);
        let size = reg.get(8..12).and_then(read_u64_be).unwrap_or(0);
        say!("memory: 0x{base:x} + 0x{size:x}");
    }
    if let Some(serial) = fdt
        .root()
        .property("serial-number")
        .and_then(|p| p.value_as::<&str>().ok())
    {
        say!("serial-number: {serial}");
    }
    if let Some(stamp) = fdt
        .find_node("/chosen/bootloader")
        .and_then(|node| node.property("build-timestamp"))
        .and_then(|p| read_u64_be(p.value()))
    {
        say!("bootloader build-timestamp: 0x{stamp:x}");
    }
}

#[unsafe(no_mangle)]
extern "C" fn test_kernel_main(running_at: usize, dtb: usize, nonzero_args: u64) -> ! {
    let el: u64;
    let sctlr: u64;
    // SAFETY: reading CurrentEL and SCTLR_EL2/EL1 has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack));
    }
    let el = (el >> 2) & 3;
    // SAFETY: as above; the register of the level we run at.
    unsafe {
        if el == 2 {
            core::arch::asm!("mrs {}, sctlr_el2", out(reg) sctlr, options(nomem, nostack));
        } else {
            core::arch::asm!("mrs {}, sctlr_el1", out(reg) sctlr, options(nomem, nostack));
        }
    }
    say!(
        "entered at EL{el} at 0x{running_at:x}, MMU {}, D-cache {}, x0=0x{dtb:x}, x1-x3 {}",
        if sctlr & 1 == 0 { "off" } else { "on" },
        if sctlr & 4 == 0 { "off" } else { "on" },
        if nonzero_args == 0 {
            "zero"
        } else {
            "NOT zero"
        },
    );

    // SAFETY: x0 is the DTB by the boot protocol; the header is read first
    // and the blob's own size bounds the slice (and Fdt::new validates it).
    let header = unsafe { core::slice::from_raw_parts(dtb as *const u8, 8) };
    let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if u32::from_be_bytes([header[0], header[1], header[2], header[3]]) != 0xd00d_feed
        || size > 2 << 20
    {
        say!("no valid DTB at x0: resetting");
        reset();
    }
    // SAFETY: as above, `size` bytes from the validated header.
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, size) };
    let Ok(fdt) = Fdt::new(blob) else {
        say!("DTB at x0 does not parse: resetting");
        reset();
    };
    let chosen = fdt.find_node("/chosen");
    let bootargs = chosen
        .and_then(|node| {
            node.property("bootargs")
                .and_then(|p| p.value_as::<&str>().ok())
        })
        .unwrap_or("");
    say!("bootargs: {bootargs}");
    if let Some(model) = fdt
        .root()
        .property("model")
        .and_then(|p| p.value_as::<&str>().ok())
    {
        say!("model: {model}");
    }
    report_fill_ins(fdt);
    let initrd = chosen.and_then(|node| {
        let start = read_u64_be(node.property("linux,initrd-start")?.value())?;
        let end = read_u64_be(node.property("linux,initrd-end")?.value())?;
        Some((start, end))
    });
    if let Some((start, end)) = initrd {
        let length = end.saturating_sub(start) as usize;
        // SAFETY: the loader promises the initrd occupies [start, end) of RAM.
        let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, length) };
        let sum = bytes.iter().fold(0u32, |sum, &b| {
            sum.wrapping_mul(31).wrapping_add(u32::from(b))
        });
        say!("initrd 0x{start:x}-0x{end:x} ({length} bytes, checksum 0x{sum:08x})");
    } else {
        say!("no initrd");
    }

    // The hang guard as the loader left it (PM RSTC.WRCFG and WDOG.TIME).
    // SAFETY: the PM block at this address for the program's life; reads only.
    let watchdog = unsafe { Watchdog::new(memory_map::PM) };
    if watchdog.is_armed() {
        say!(
            "watchdog armed: {} ms left",
            watchdog.time_left().as_millis()
        );
    } else {
        say!("watchdog not armed");
    }

    match bootargs
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("zbtest="))
    {
        Some("hang") => {
            say!("hanging as asked");
            loop {
                core::hint::spin_loop();
            }
        }
        Some("good") => say!("good boot: resetting"),
        _ => say!("failed boot: resetting"),
    }
    reset()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("panic: {info}");
    reset()
}
