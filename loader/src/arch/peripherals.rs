//! The one place where the loader creates its peripheral drivers.

use hal_bcm2711::dwc2::{DmaBuffer, Dwc2};
use hal_bcm2711::emmc2::{AdmaTable, Emmc2};
use hal_bcm2711::gpio::Gpio;
use hal_bcm2711::mailbox::Mailbox;
use hal_bcm2711::memory_map;
use hal_bcm2711::pl011::Pl011Uart;
use hal_bcm2711::pm::Watchdog;

/// The drivers zboot's boot flow uses, each created once.
#[derive(Debug)]
pub struct Peripherals {
    /// Taken by the console.
    pub uart: Option<Pl011Uart>,
    pub mailbox: Mailbox,
    pub watchdog: Watchdog,
    pub gpio: Gpio,
    /// Taken by the storage path.
    pub emmc2: Option<Emmc2>,
    /// EMMC2's ADMA2 descriptor table, taken with it.
    pub emmc2_adma_table: Option<&'static mut AdmaTable>,
    /// Taken by USB recovery.
    pub dwc2: Option<Dwc2>,
}

/// The DWC2's DMA buffer: in `.bss`, inside the first GiB its DMA reaches.
static mut DWC2_DMA: DmaBuffer = DmaBuffer::zeroed();

/// EMMC2's ADMA2 descriptor table: in `.bss`, inside the first GiB, which every
/// BCM2711's EMMC2 reaches (`hal_bcm2711::emmc2::adma`).
static mut EMMC2_ADMA: AdmaTable = AdmaTable::new();

static mut TAKEN: bool = false;

/// Hands out the peripherals; the second call panics (one owner per device).
pub fn take_peripherals() -> Peripherals {
    let taken = &raw mut TAKEN;
    // SAFETY: single CPU, no interrupts; the flag is only touched here.
    assert!(!unsafe { taken.read_volatile() }, "peripherals taken twice");
    // SAFETY: as above.
    unsafe { taken.write_volatile(true) };
    // SAFETY: the addresses are the BCM2711 blocks of these register layouts
    // (memory_map), identity-mapped as Device memory for the program's life,
    // and this function runs once, so each driver is the only owner (the
    // fault path's extra UART and watchdog are allowed by their contracts;
    // the test hooks' extra EMMC2 and DWC2 drivers are dropped before these
    // are used); DWC2_DMA and EMMC2_ADMA are referenced only here, once.
    unsafe {
        Peripherals {
            uart: Some(Pl011Uart::new(memory_map::PL011_UART0)),
            mailbox: Mailbox::new(memory_map::MAILBOX),
            watchdog: Watchdog::new(memory_map::PM),
            gpio: Gpio::new(memory_map::GPIO),
            emmc2: Some(Emmc2::new(memory_map::EMMC2)),
            emmc2_adma_table: Some(&mut *core::ptr::addr_of_mut!(EMMC2_ADMA)),
            dwc2: Some(Dwc2::new(
                memory_map::DWC2,
                &mut *core::ptr::addr_of_mut!(DWC2_DMA),
            )),
        }
    }
}

/// Resets the board now through the PM watchdog.
pub fn reset_now() -> ! {
    // SAFETY: PM is the power-management block, mapped for the program's
    // life; a reset needs no exclusivity (it ends everything).
    let watchdog = unsafe { Watchdog::new(memory_map::PM) };
    watchdog.reset_now()
}
