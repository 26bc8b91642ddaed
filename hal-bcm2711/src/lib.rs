//! Register-level drivers for the BCM2711 (Raspberry Pi 4 / CM4) used by zboot.
//!
//! No policy and no file formats live here: each module drives one block and
//! reports what went wrong as a small error enum. Every hardware wait is
//! bounded (a [`generic_timer::Deadline`] or a documented poll count) and
//! fails with a `Timeout` naming what it was waiting for. All registers are
//! reached through one typed wrapper, [`mmio::Mmio`], whose `unsafe`
//! constructor is the only place an address becomes a register block.
//!
//! Modules:
//! - [`board_revision`]: decoding the firmware's board revision code.
//! - [`memory_map`]: ARM physical base addresses and the VideoCore bus alias.
//! - [`mmio`]: the typed MMIO wrapper.
//! - [`pl011`]: the PL011 console UART.
//! - [`gpio`]: pin functions, levels, BCM2711 pulls, the ACT LED.
//! - [`generic_timer`]: monotonic time, deadlines, delays (`CNTPCT_EL0`).
//! - [`system_timer`]: the BCM2711 1 MHz System Timer.
//! - [`mailbox`]: the VideoCore property channel.
//! - [`cache`]: data-cache maintenance for buffers shared with bus masters.
//! - [`pm`]: the PM watchdog, chip reset and reset status.
//! - [`emmc2`]: the EMMC2 SDHCI: SD/eMMC card init, block reads and writes by
//!   ADMA2 (with PIO as the fallback).
//! - [`dwc2`]: the DWC2 USB 2.0 OTG controller as a host: core reset, root
//!   port, control and bulk transfers in buffer DMA mode.
//! - [`usb`]: USB protocol above any controller: descriptors, hubs,
//!   enumeration, Bulk-Only mass storage with SCSI block reads.
//!
//! The crate is `no_std`; on the host it builds with `std` for its unit
//! tests, which cover the pure parts (divisors, tick conversions, the
//! mailbox codec, pin encodings, reset-status decoding).

#![cfg_attr(not(test), no_std)]

pub mod board_revision;
pub mod cache;
pub mod dwc2;
pub mod emmc2;
pub mod generic_timer;
pub mod gpio;
pub mod mailbox;
pub mod memory_map;
pub mod mmio;
pub mod pl011;
pub mod pm;
pub mod system_timer;
pub mod usb;

pub use generic_timer::{Deadline, Instant, delay};
pub use gpio::{ActLed, Button, Function, Gpio, GpioError, Pin, Pull};
pub use mailbox::{ClockId, Mailbox, MailboxError, PowerDevice};
pub use mmio::Mmio;
pub use pl011::{Pl011Error, Pl011Uart};
pub use pm::{PmError, ResetReason, Watchdog};
pub use system_timer::SystemTimer;
