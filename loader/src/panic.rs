//! The panic handler: report, then reset (or fail the QEMU run in test builds).

use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    crate::arch::write_raw(format_args!("\r\n*** zboot: panic: {info}\r\n"));
    #[cfg(feature = "qemu-test")]
    {
        crate::arch::write_raw(format_args!("*** zboot: exiting QEMU with status 101\r\n"));
        crate::arch::qemu_exit(101)
    }
    #[cfg(not(feature = "qemu-test"))]
    {
        crate::arch::write_raw(format_args!("*** zboot: resetting the board\r\n"));
        crate::arch::reset_now()
    }
}
