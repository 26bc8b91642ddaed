//! PL011 UART driver: 8N1 console output with bounded waits, usable from fault paths.
//!
//! Register layout and bit meanings: Arm PrimeCell UART (PL011) Technical
//! Reference Manual (DDI 0183), §3.2 "Summary of registers" and §3.3
//! "Register descriptions"; the BCM2711 instance is described in BCM2711 ARM
//! Peripherals §11 (which marks the IrDA and modem-control bits other than
//! RTS/CTS as unsupported).
//!
//! The reference clock is an input: the firmware sets it (`init_uart_clock`,
//! 48 MHz by default on the Pi 4/CM4 firmware) and reports it through the
//! mailbox (`mailbox::ClockId::Uart`). QEMU's PL011 ignores the divisors and
//! prints even when the UART was never initialised.
//!
//! Waits are bounded by poll counts rather than by the generic timer, so the
//! driver works in any fault path, with nothing else initialised.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

use crate::mmio::Mmio;

/// The console rate zboot uses (the Pi firmware's `init_uart_baud` default).
pub const DEFAULT_BAUD: u32 = 115_200;

/// The UART reference clock the Pi 4/CM4 firmware configures by default
/// (`init_uart_clock`); prefer the mailbox's answer when there is one.
pub const FIRMWARE_DEFAULT_CLOCK_HZ: u32 = 48_000_000;

/// How many times [`Pl011Uart::write_byte`] polls for transmit-FIFO space
/// before dropping the byte.
///
/// A free slot appears once per character time: 1.04 ms at 9600 baud (the
/// slowest rate worth supporting; 87 µs at 115200). Each poll is an uncached
/// Device read of UARTFR over the peripheral bus, tens to hundreds of ns on
/// the BCM2711, so 100 000 polls last a few to some tens of ms: more than one
/// character time at 9600 baud. A UART that is disabled, unclocked or held
/// by flow control never frees a slot; then the byte is dropped instead of
/// hanging the boot, and later bytes are dropped at once (see `stalled`).
pub const TX_FIFO_POLL_LIMIT: u32 = 100_000;

/// How many times [`Pl011Uart::flush`] polls UARTFR.BUSY: enough to drain a
/// full transmit FIFO plus the shift register (at most 33 characters on any
/// PL011 variant the Pi uses) at [`TX_FIFO_POLL_LIMIT`] polls per character.
pub const FLUSH_POLL_LIMIT: u32 = 33 * TX_FIFO_POLL_LIMIT;

register_bitfields! {
    u32,
    /// Data Register (PL011 TRM §3.3.1).
    pub DR [
        /// Overrun error.
        OE OFFSET(11) NUMBITS(1) [],
        /// Break error.
        BE OFFSET(10) NUMBITS(1) [],
        /// Parity error.
        PE OFFSET(9) NUMBITS(1) [],
        /// Framing error.
        FE OFFSET(8) NUMBITS(1) [],
        /// Receive (read) data character / Transmit (write) data character.
        DATA OFFSET(0) NUMBITS(8) []
    ],

    /// Flag Register (PL011 TRM §3.3.3).
    pub FR [
        /// Transmit FIFO empty.
        TXFE OFFSET(7) NUMBITS(1) [],
        /// Receive FIFO full.
        RXFF OFFSET(6) NUMBITS(1) [],
        /// Transmit FIFO full. If the FIFO is disabled, this bit is set when
        /// the transmit holding register is full.
        TXFF OFFSET(5) NUMBITS(1) [],
        /// Receive FIFO empty.
        RXFE OFFSET(4) NUMBITS(1) [],
        /// UART busy. Set while the UART is transmitting data, and as soon as
        /// the transmit FIFO becomes non-empty, regardless of whether the
        /// UART is enabled or not.
        BUSY OFFSET(3) NUMBITS(1) [],
        /// Clear to send.
        CTS OFFSET(0) NUMBITS(1) []
    ],

    /// Integer Baud Rate Register (PL011 TRM §3.3.5).
    pub IBRD [
        /// The integer baud rate divisor.
        BAUD_DIVINT OFFSET(0) NUMBITS(16) []
    ],

    /// Fractional Baud Rate Register (PL011 TRM §3.3.6).
    pub FBRD [
        /// The fractional baud rate divisor.
        BAUD_DIVFRAC OFFSET(0) NUMBITS(6) []
    ],

    /// Line Control Register (PL011 TRM §3.3.7). A write to it latches
    /// IBRD/FBRD too: the three form one register updated by the LCR_H write.
    pub LCR_H [
        /// Stick parity select.
        SPS OFFSET(7) NUMBITS(1) [],
        /// Word length: number of data bits transmitted or received in a frame.
        WLEN OFFSET(5) NUMBITS(2) [
            FiveBit = 0b00,
            SixBit = 0b01,
            SevenBit = 0b10,
            EightBit = 0b11
        ],
        /// Enable FIFOs. Clearing it flushes the transmit FIFO.
        FEN OFFSET(4) NUMBITS(1) [
            FifosDisabled = 0,
            FifosEnabled = 1
        ],
        /// Two stop bits select.
        STP2 OFFSET(3) NUMBITS(1) [],
        /// Even parity select.
        EPS OFFSET(2) NUMBITS(1) [],
        /// Parity enable.
        PEN OFFSET(1) NUMBITS(1) [],
        /// Send break.
        BRK OFFSET(0) NUMBITS(1) []
    ],

    /// Control Register (PL011 TRM §3.3.8).
    pub CR [
        /// CTS hardware flow control enable.
        CTSEN OFFSET(15) NUMBITS(1) [],
        /// RTS hardware flow control enable.
        RTSEN OFFSET(14) NUMBITS(1) [],
        /// Request to send.
        RTS OFFSET(11) NUMBITS(1) [],
        /// Receive enable.
        RXE OFFSET(9) NUMBITS(1) [],
        /// Transmit enable.
        TXE OFFSET(8) NUMBITS(1) [],
        /// Loopback enable.
        LBE OFFSET(7) NUMBITS(1) [],
        /// UART enable.
        UARTEN OFFSET(0) NUMBITS(1) []
    ],

    /// Interrupt Clear Register (PL011 TRM §3.3.13): write 1 to clear.
    pub ICR [
        /// All eleven interrupt clear bits (OEIC..RIMIC).
        ALL OFFSET(0) NUMBITS(11) []
    ]
}

register_structs! {
    /// PL011 registers (PL011 TRM Table 3-1; BCM2711 ARM Peripherals §11.5).
    pub RegisterBlock {
        /// Data Register.
        (0x00 => pub dr: ReadWrite<u32, DR::Register>),
        /// Receive Status Register / Error Clear Register.
        (0x04 => pub rsrecr: ReadWrite<u32>),
        (0x08 => _reserved0),
        /// Flag Register.
        (0x18 => pub fr: ReadOnly<u32, FR::Register>),
        (0x1c => _reserved1),
        /// IrDA Low-Power Counter Register (not in use on the BCM2711).
        (0x20 => pub ilpr: ReadWrite<u32>),
        /// Integer Baud Rate Register.
        (0x24 => pub ibrd: ReadWrite<u32, IBRD::Register>),
        /// Fractional Baud Rate Register.
        (0x28 => pub fbrd: ReadWrite<u32, FBRD::Register>),
        /// Line Control Register.
        (0x2c => pub lcr_h: ReadWrite<u32, LCR_H::Register>),
        /// Control Register.
        (0x30 => pub cr: ReadWrite<u32, CR::Register>),
        /// Interrupt FIFO Level Select Register.
        (0x34 => pub ifls: ReadWrite<u32>),
        /// Interrupt Mask Set/Clear Register.
        (0x38 => pub imsc: ReadWrite<u32>),
        /// Raw Interrupt Status Register.
        (0x3c => pub ris: ReadOnly<u32>),
        /// Masked Interrupt Status Register.
        (0x40 => pub mis: ReadOnly<u32>),
        /// Interrupt Clear Register.
        (0x44 => pub icr: WriteOnly<u32, ICR::Register>),
        /// DMA Control Register.
        (0x48 => pub dmacr: ReadWrite<u32>),
        (0x4c => @END),
    }
}

/// What a bounded PL011 wait was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pl011Wait {
    /// A free slot in the transmit FIFO (UARTFR.TXFF clear).
    TransmitFifoSpace,
    /// The transmitter to go idle (UARTFR.BUSY clear).
    TransmitterIdle,
}

/// PL011 driver errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pl011Error {
    /// `reference_clock_hz / (16 * baud)` is outside the divisor range
    /// 1..=65535 (PL011 TRM §3.3.6), or `baud` is 0.
    BaudRateOutOfRange { reference_clock_hz: u32, baud: u32 },
    /// A bounded wait ran out.
    Timeout { awaiting: Pl011Wait },
}

impl fmt::Display for Pl011Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BaudRateOutOfRange {
                reference_clock_hz,
                baud,
            } => {
                write!(
                    f,
                    "PL011: {baud} baud unreachable from a {reference_clock_hz} Hz clock"
                )
            }
            Self::Timeout { awaiting } => write!(f, "PL011: timed out waiting for {awaiting:?}"),
        }
    }
}

/// The baud rate divisor as the PL011 takes it: `IBRD + FBRD / 64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaudDivisor {
    /// `UARTIBRD.BAUD_DIVINT`.
    pub integer: u16,
    /// `UARTFBRD.BAUD_DIVFRAC` (0..=63).
    pub fractional: u8,
}

/// Computes the divisor for `baud` from a `reference_clock_hz` UARTCLK.
///
/// PL011 TRM §3.3.6: `BAUDDIV = UARTCLK / (16 * baud)`, IBRD its integer part
/// and FBRD `round(fraction * 64)`. Computing `round(UARTCLK * 4 / baud)` =
/// `round(BAUDDIV * 64)` in one step also carries a fraction that rounds up
/// to 64 into the integer part. The TRM allows 1 <= BAUDDIV <= 65535 (IBRD 0
/// is invalid; with IBRD 0xFFFF, FBRD must be 0).
pub const fn baud_divisor(reference_clock_hz: u32, baud: u32) -> Result<BaudDivisor, Pl011Error> {
    let error = Pl011Error::BaudRateOutOfRange {
        reference_clock_hz,
        baud,
    };
    if baud == 0 {
        return Err(error);
    }
    let baud = baud as u64;
    let times_64 = (reference_clock_hz as u64 * 4 + baud / 2) / baud;
    let integer = times_64 >> 6;
    let fractional = times_64 & 0x3f;
    if integer == 0 || integer > 0xFFFF || (integer == 0xFFFF && fractional != 0) {
        return Err(error);
    }
    Ok(BaudDivisor {
        integer: integer as u16,
        fractional: fractional as u8,
    })
}

/// A PL011 UART used as a polled console.
///
/// All methods take `&self`, so one instance can sit in a `static` or a
/// lock. `stalled` is touched only with plain loads and stores (no
/// read-modify-write), which compile to ordinary byte accesses and so work
/// with the MMU off.
pub struct Pl011Uart {
    registers: Mmio<RegisterBlock>,
    /// Set when a byte was dropped because the transmit FIFO never drained;
    /// while set, bytes are dropped at once unless the FIFO has space, so a
    /// dead UART costs one poll bound in total, not one per byte.
    stalled: AtomicBool,
}

impl Pl011Uart {
    /// A driver for the PL011 at `base` (normally
    /// [`crate::memory_map::PL011_UART0`]). Touches no register, so it can be
    /// built in a panic or fault path, beside the normal console instance.
    ///
    /// # Safety
    ///
    /// As [`Mmio::new`]: `base` is the mapped PL011 for the rest of the
    /// program. Several instances may coexist (the fault path's and the
    /// logger's); output of concurrent writers may interleave, and
    /// [`Pl011Uart::init`] must not run while another instance writes.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            // SAFETY: forwarded to the caller (this function's contract).
            registers: unsafe { Mmio::new(base) },
            stalled: AtomicBool::new(false),
        }
    }

    /// Programs 8 data bits, no parity, 1 stop bit, FIFOs on, transmit and
    /// receive enabled, all interrupts masked, at `baud` from a
    /// `reference_clock_hz` UARTCLK.
    ///
    /// Follows the reprogramming order of PL011 TRM §3.3.8: let the current
    /// transmission finish (bounded; a UART stuck busy is reprogrammed
    /// anyway), disable, flush the FIFO by clearing FEN, program the
    /// divisors, write `LCR_H` (which latches them), enable.
    pub fn init(&self, reference_clock_hz: u32, baud: u32) -> Result<(), Pl011Error> {
        let divisor = baud_divisor(reference_clock_hz, baud)?;
        let registers = &self.registers;
        // Let what the firmware or an earlier stage queued drain while the
        // UART still runs (a disabled UART never drains, so do not wait for
        // one); reprogramming proceeds even if the transmission never ends.
        if registers.cr.is_set(CR::UARTEN) {
            let _ = self.flush();
        }
        registers.cr.set(0);
        registers.lcr_h.write(LCR_H::FEN::FifosDisabled);
        registers.imsc.set(0);
        registers.icr.write(ICR::ALL.val(0x7ff));
        registers
            .ibrd
            .write(IBRD::BAUD_DIVINT.val(u32::from(divisor.integer)));
        registers
            .fbrd
            .write(FBRD::BAUD_DIVFRAC.val(u32::from(divisor.fractional)));
        registers
            .lcr_h
            .write(LCR_H::WLEN::EightBit + LCR_H::FEN::FifosEnabled);
        registers
            .cr
            .write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
        self.stalled.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Queues one byte for transmission.
    ///
    /// Waits at most [`TX_FIFO_POLL_LIMIT`] polls for FIFO space, then drops
    /// the byte and returns `Timeout`. After such a timeout the UART counts
    /// as stalled: later bytes are written if there is space at the first
    /// look and dropped otherwise, until a write succeeds again.
    pub fn write_byte(&self, byte: u8) -> Result<(), Pl011Error> {
        let limit = if self.stalled.load(Ordering::Relaxed) {
            1
        } else {
            TX_FIFO_POLL_LIMIT
        };
        if !self.poll_until(limit, |fr| !fr.is_set(FR::TXFF)) {
            self.stalled.store(true, Ordering::Relaxed);
            return Err(Pl011Error::Timeout {
                awaiting: Pl011Wait::TransmitFifoSpace,
            });
        }
        self.registers.dr.write(DR::DATA.val(u32::from(byte)));
        self.stalled.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Queues `bytes`, dropping those the UART cannot take (see
    /// [`Pl011Uart::write_byte`]). No newline translation: callers send
    /// `"\r\n"` themselves.
    pub fn write_bytes(&self, bytes: &[u8]) {
        for &byte in bytes {
            // A dropped console byte is not an error worth stopping for.
            let _ = self.write_byte(byte);
        }
    }

    /// Waits (at most [`FLUSH_POLL_LIMIT`] polls) until everything queued
    /// has left the shift register — e.g. before a reset or the kernel
    /// hand-off.
    pub fn flush(&self) -> Result<(), Pl011Error> {
        if self.poll_until(FLUSH_POLL_LIMIT, |fr| !fr.is_set(FR::BUSY)) {
            Ok(())
        } else {
            Err(Pl011Error::Timeout {
                awaiting: Pl011Wait::TransmitterIdle,
            })
        }
    }

    /// A received byte, if one is waiting; never waits. Characters received
    /// with a framing, parity, break or overrun error are discarded.
    pub fn read_byte(&self) -> Option<u8> {
        if self.registers.fr.is_set(FR::RXFE) {
            return None;
        }
        let data = self.registers.dr.extract();
        if data.is_set(DR::OE) || data.is_set(DR::BE) || data.is_set(DR::PE) || data.is_set(DR::FE)
        {
            // Clear the error flags (any write to UARTECR clears them).
            self.registers.rsrecr.set(0);
            return None;
        }
        Some(data.read(DR::DATA) as u8)
    }

    /// Polls UARTFR up to `limit` times until `ready` holds.
    fn poll_until(
        &self,
        limit: u32,
        ready: impl Fn(tock_registers::LocalRegisterCopy<u32, FR::Register>) -> bool,
    ) -> bool {
        for _ in 0..limit {
            if ready(self.registers.fr.extract()) {
                return true;
            }
            core::hint::spin_loop();
        }
        false
    }
}

impl fmt::Write for Pl011Uart {
    /// Never fails: bytes the UART cannot take are dropped (a console must
    /// not abort a report half-way).
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.write_bytes(text.as_bytes());
        Ok(())
    }
}

impl fmt::Debug for Pl011Uart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pl011Uart")
            .field("registers", &self.registers)
            .field("stalled", &self.stalled.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisor_for_the_pi4_firmware_clock() {
        // 48 MHz / (16 * 115200) = 26.0417: IBRD 26, FBRD round(0.0417*64) = 3.
        assert_eq!(
            baud_divisor(48_000_000, 115_200),
            Ok(BaudDivisor {
                integer: 26,
                fractional: 3
            })
        );
    }

    #[test]
    fn divisor_for_the_qemu_reported_clock() {
        // QEMU's mailbox reports a 3 MHz UART clock: 1.6276 -> 1 + 40/64.
        assert_eq!(
            baud_divisor(3_000_000, 115_200),
            Ok(BaudDivisor {
                integer: 1,
                fractional: 40
            })
        );
    }

    #[test]
    fn divisor_exact_and_rounding_carry() {
        // 48 MHz / (16 * 9600) = 312.5 exactly.
        assert_eq!(
            baud_divisor(48_000_000, 9_600),
            Ok(BaudDivisor {
                integer: 312,
                fractional: 32
            })
        );
        // BAUDDIV = 2.9995: the fraction rounds to 64 and carries: 3 + 0/64.
        assert_eq!(
            baud_divisor(47_992, 1_000),
            Ok(BaudDivisor {
                integer: 3,
                fractional: 0
            })
        );
    }

    #[test]
    fn divisor_out_of_range() {
        let too_fast = Pl011Error::BaudRateOutOfRange {
            reference_clock_hz: 3_000_000,
            baud: 1_000_000,
        };
        assert_eq!(baud_divisor(3_000_000, 1_000_000), Err(too_fast));
        let too_slow = Pl011Error::BaudRateOutOfRange {
            reference_clock_hz: 48_000_000,
            baud: 10,
        };
        assert_eq!(baud_divisor(48_000_000, 10), Err(too_slow));
        let zero = Pl011Error::BaudRateOutOfRange {
            reference_clock_hz: 48_000_000,
            baud: 0,
        };
        assert_eq!(baud_divisor(48_000_000, 0), Err(zero));
        // BAUDDIV = 65535 exactly is the largest allowed; a hair above is not.
        assert_eq!(
            baud_divisor(65_535 * 16, 1),
            Ok(BaudDivisor {
                integer: 0xFFFF,
                fractional: 0
            })
        );
        assert!(baud_divisor(65_535 * 16 + 1, 1).is_err());
    }
}
