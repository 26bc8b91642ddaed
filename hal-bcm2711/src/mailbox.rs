//! VideoCore mailbox property channel (channel 8): board facts, clock rates, power domains.
//!
//! Sources:
//! - registers: Linux `drivers/mailbox/bcm2835-mailbox.c` (MAIL0 read at
//!   +0x00, status +0x18, config +0x1C, MAIL1 write at +0x20; status bit 31
//!   FULL, bit 30 EMPTY; "We deliver to the VC in mailbox 1, it delivers to
//!   us in mailbox 0") and QEMU `hw/misc/bcm2835_mbox.c` (MAIL1 status at
//!   +0x38, MAIL0 sender at +0x14). The BCM2711 ARM Peripherals document
//!   does not describe the mailboxes.
//! - message format and tags: the Raspberry Pi firmware wiki, "Mailbox
//!   property interface": a 16-byte aligned buffer of u32 words — total size
//!   in bytes, a request/response code (0 request, `0x8000_0000` success,
//!   `0x8000_0001` error parsing the request), then tags (id, value buffer
//!   size, request/response indicator whose bit 31 marks a response and whose
//!   bits 30..0 then hold the response length in bytes, value buffer), then
//!   the end tag 0. The message word posted is the buffer's bus address with
//!   the channel in bits 3..0.
//!
//! On the real board the VideoCore reads and writes the buffer through the
//! `0xC000_0000` bus alias, behind the ARM caches' back: the buffer is cleaned
//! before posting and invalidated after the reply ([`crate::cache`]). QEMU
//! answers at once (its answers: `hw/misc/bcm2835_property.c` — e.g. board
//! serial is "NYI" and reads 0, the UART clock reads 3 MHz).
//!
//! The message codec is pure ([`encode_request`], [`decode_response`]) and
//! host-tested; [`Mailbox`] adds the registers, the cache maintenance and
//! the bounded waits.

use core::fmt;
use core::hint::spin_loop;
use core::sync::atomic::{Ordering, compiler_fence};
use core::time::Duration;

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

use crate::cache;
use crate::generic_timer::Deadline;
use crate::memory_map;
use crate::mmio::Mmio;

/// The property channel (ARM to VideoCore requests), firmware wiki "Mailboxes".
pub const PROPERTY_CHANNEL: u32 = 8;

/// How long the firmware gets to answer a property request: one second, as
/// Linux `drivers/firmware/raspberrypi.c` (`wait_for_completion_timeout(...,
/// HZ)`, "Firmware transaction timeout").
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// How long to wait for room in the ARM-to-VideoCore mailbox. The firmware
/// drains it as it takes requests, so the same one-second bound applies.
pub const WRITE_SPACE_TIMEOUT: Duration = Duration::from_secs(1);

/// Size of the message buffer in 32-bit words (256 bytes: four Cortex-A72
/// cache lines; plenty for one tag).
pub const BUFFER_WORDS: usize = 64;

/// Buffer request/response code: a request (firmware wiki).
pub const CODE_REQUEST: u32 = 0;
/// Buffer request/response code: request successful.
pub const CODE_SUCCESS: u32 = 0x8000_0000;
/// Buffer request/response code: error parsing request buffer (partial
/// response).
pub const CODE_PARSE_ERROR: u32 = 0x8000_0001;
/// Tag request/response indicator bit 31: set by the firmware in a response.
pub const TAG_RESPONSE: u32 = 0x8000_0000;

/// Most replies a mailbox FIFO can hold; stale replies are drained up to
/// this many before posting (QEMU models 32 entries; the hardware has fewer).
const MAILBOX_DEPTH: usize = 32;

/// Words before the first tag: total size, code.
const HEADER_WORDS: usize = 2;
/// Words of a tag header: id, value buffer size, request/response indicator.
const TAG_HEADER_WORDS: usize = 3;

register_bitfields! {
    u32,
    /// Mailbox status (Linux bcm2835-mailbox.c `ARM_MS_*`).
    pub STATUS [
        /// The mailbox is full: no write is possible.
        FULL OFFSET(31) NUMBITS(1) [],
        /// The mailbox is empty: no read is possible.
        EMPTY OFFSET(30) NUMBITS(1) []
    ]
}

register_structs! {
    /// ARM-side mailbox registers at `0x7E00_B880`.
    pub RegisterBlock {
        /// Mailbox 0 (VideoCore to ARM) read: pops one message.
        (0x00 => pub mail0_read: ReadOnly<u32>),
        (0x04 => _reserved0),
        /// Mailbox 0 peek: the next message without popping it.
        (0x10 => pub mail0_peek: ReadOnly<u32>),
        /// Mailbox 0 sender.
        (0x14 => pub mail0_sender: ReadOnly<u32>),
        /// Mailbox 0 status.
        (0x18 => pub mail0_status: ReadOnly<u32, STATUS::Register>),
        /// Mailbox 0 configuration (interrupt enables; unused: zboot polls).
        (0x1c => pub mail0_config: ReadWrite<u32>),
        /// Mailbox 1 (ARM to VideoCore) write.
        (0x20 => pub mail1_write: WriteOnly<u32>),
        (0x24 => _reserved1),
        /// Mailbox 1 status.
        (0x38 => pub mail1_status: ReadOnly<u32, STATUS::Register>),
        (0x3c => @END),
    }
}

/// Property tags zboot uses (firmware wiki; Linux
/// `include/soc/bcm2835/raspberrypi-firmware.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Tag {
    /// Get firmware revision: response u32.
    GetFirmwareRevision = 0x0000_0001,
    /// Get board model: response u32.
    GetBoardModel = 0x0001_0001,
    /// Get board revision: response u32 (the board's revision code).
    GetBoardRevision = 0x0001_0002,
    /// Get board serial: response u64.
    GetBoardSerial = 0x0001_0004,
    /// Get ARM memory: response base, size (u32 each, bytes).
    GetArmMemory = 0x0001_0005,
    /// Get VC memory: response base, size.
    GetVcMemory = 0x0001_0006,
    /// Get power state: request device id; response device id, state.
    GetPowerState = 0x0002_0001,
    /// Set power state: request device id, state; response device id, state.
    SetPowerState = 0x0002_8001,
    /// Get clock rate: request clock id; response clock id, rate in Hz.
    GetClockRate = 0x0003_0002,
    /// Get max clock rate: request clock id; response clock id, rate in Hz.
    GetMaxClockRate = 0x0003_0004,
    /// Set clock rate: request clock id, rate in Hz, "skip setting turbo";
    /// response clock id, the rate set (firmware wiki "Mailbox property
    /// interface", Clocks).
    SetClockRate = 0x0003_8002,
    /// Set GPIO config: request gpio (128 + line for the firmware's expander),
    /// direction (1 out), polarity (1 active low), termination enable, pull-up,
    /// initial state; the response's first word is 0 on success (Linux
    /// `gpio-raspberrypi-exp.c` checks `set.gpio != 0`; tag value from
    /// `raspberrypi-firmware.h` `RPI_FIRMWARE_SET_GPIO_CONFIG`).
    SetGpioConfig = 0x0003_8043,
}

/// The firmware numbers its GPIO expander's lines from 128 (Linux
/// `gpio-raspberrypi-exp.c` `RPI_EXP_GPIO_BASE`).
pub const EXPANDER_GPIO_BASE: u32 = 128;

/// Firmware clock ids (firmware wiki "Clocks"; Linux `rpi_firmware_clk_id`).
/// Each is the base clock of that block, before the block's own divider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ClockId {
    /// The legacy SDHCI ("EMMC") base clock.
    Emmc = 1,
    /// The PL011 reference clock (UARTCLK).
    Uart = 2,
    /// The ARM cores.
    Arm = 3,
    /// The VideoCore core (VPU) clock.
    Core = 4,
    /// 3D block.
    V3d = 5,
    /// H.264 block.
    H264 = 6,
    /// Image sensor pipeline.
    Isp = 7,
    /// SDRAM.
    Sdram = 8,
    /// Pixel valve.
    Pixel = 9,
    /// PWM.
    Pwm = 10,
    /// HEVC block (BCM2711).
    Hevc = 11,
    /// The EMMC2 base clock (BCM2711).
    Emmc2 = 12,
    /// M2MC (BCM2711).
    M2mc = 13,
    /// Pixel BVB (BCM2711).
    PixelBvb = 14,
}

/// Firmware power-domain device ids (firmware wiki "Power").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum PowerDevice {
    /// SD card.
    SdCard = 0,
    /// UART0.
    Uart0 = 1,
    /// UART1.
    Uart1 = 2,
    /// USB HCD: the DWC2 controller's power domain (Linux raspberrypi-power.c
    /// `RPI_OLD_POWER_DOMAIN_USB` = 3; not the DT binding's `RPI_POWER_DOMAIN_USB`).
    UsbHcd = 3,
    /// I2C0.
    I2c0 = 4,
    /// I2C1.
    I2c1 = 5,
    /// I2C2.
    I2c2 = 6,
    /// SPI.
    Spi = 7,
    /// CCP2TX.
    Ccp2tx = 8,
}

/// A memory range reported by the firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Base address in bytes.
    pub base: u32,
    /// Size in bytes.
    pub size: u32,
}

/// What a bounded mailbox wait was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailboxWait {
    /// Room in mailbox 1 (status FULL clear).
    WriteSpace,
    /// Our reply in mailbox 0 (status EMPTY clear, matching message).
    Reply,
}

/// Mailbox errors; each names the tag or device concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailboxError {
    /// A bounded wait ran out.
    Timeout { awaiting: MailboxWait },
    /// The message buffer is not in the first GiB of RAM, which is all the
    /// VideoCore can reach.
    BufferUnreachable { address: usize },
    /// The request does not fit [`BUFFER_WORDS`].
    RequestTooLarge { tag: Tag },
    /// The firmware answered `0x8000_0001`: error parsing the request.
    RequestRejected { tag: Tag },
    /// The buffer code is neither success nor error: the firmware did not
    /// process the buffer (or someone else's reply was taken for ours).
    NoResponse { tag: Tag, code: u32 },
    /// The tag id in the reply differs from the one sent.
    TagMismatch { tag: Tag, found: u32 },
    /// The tag's indicator lacks the response bit: the firmware skipped it
    /// (an unknown tag).
    TagNotAnswered { tag: Tag },
    /// The tag's response is shorter than its documented length.
    ResponseLength { tag: Tag, expected: u32, found: u32 },
    /// The clock does not exist (the firmware answered rate 0).
    ClockNotFound { clock: ClockId },
    /// The power-domain device does not exist (state bit 1).
    DeviceNotFound { device: PowerDevice },
    /// The device did not reach the requested power state.
    PowerStateNotReached {
        device: PowerDevice,
        requested_on: bool,
    },
    /// The firmware refused a GPIO expander request (its status word, not 0).
    GpioRefused { line: u32, status: u32 },
}

impl fmt::Display for MailboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { awaiting } => write!(f, "mailbox: timed out waiting for {awaiting:?}"),
            Self::BufferUnreachable { address } => {
                write!(
                    f,
                    "mailbox: buffer at {address:#x} is beyond the VideoCore's first GiB"
                )
            }
            Self::RequestTooLarge { tag } => write!(f, "mailbox: {tag:?} request too large"),
            Self::RequestRejected { tag } => write!(f, "mailbox: firmware rejected {tag:?}"),
            Self::NoResponse { tag, code } => {
                write!(f, "mailbox: no response to {tag:?} (code {code:#010x})")
            }
            Self::TagMismatch { tag, found } => {
                write!(f, "mailbox: reply to {tag:?} carries tag {found:#010x}")
            }
            Self::TagNotAnswered { tag } => write!(f, "mailbox: firmware did not answer {tag:?}"),
            Self::ResponseLength {
                tag,
                expected,
                found,
            } => write!(
                f,
                "mailbox: {tag:?} response is {found} bytes, expected {expected}"
            ),
            Self::ClockNotFound { clock } => write!(f, "mailbox: no clock {clock:?}"),
            Self::DeviceNotFound { device } => write!(f, "mailbox: no power device {device:?}"),
            Self::GpioRefused { line, status } => write!(
                f,
                "mailbox: the firmware refused GPIO expander line {line} (status {status:#x})"
            ),
            Self::PowerStateNotReached {
                device,
                requested_on,
            } => {
                write!(
                    f,
                    "mailbox: {device:?} did not switch {}",
                    if *requested_on { "on" } else { "off" }
                )
            }
        }
    }
}

/// Encodes a one-tag property request into `buffer` and returns the message
/// length in words (a multiple of four: the buffer size is kept a multiple
/// of 16 bytes). The value buffer is sized for the larger of the request and
/// the expected response, and zero-filled past the request.
pub fn encode_request(
    buffer: &mut [u32],
    tag: Tag,
    request: &[u32],
    response_words: usize,
) -> Result<usize, MailboxError> {
    let value_words = request.len().max(response_words);
    let used = HEADER_WORDS + TAG_HEADER_WORDS + value_words + 1;
    let total = used.next_multiple_of(4);
    let message = buffer
        .get_mut(..total)
        .ok_or(MailboxError::RequestTooLarge { tag })?;
    message.fill(0);
    message[0] = (total * 4) as u32;
    message[1] = CODE_REQUEST;
    message[2] = tag as u32;
    message[3] = (value_words * 4) as u32;
    message[4] = (request.len() * 4) as u32;
    let value_start = HEADER_WORDS + TAG_HEADER_WORDS;
    message[value_start..value_start + request.len()].copy_from_slice(request);
    // The end tag (0) at value_start + value_words and the padding are
    // already zero.
    Ok(total)
}

/// Checks a reply to a one-tag request made by [`encode_request`] and
/// returns the tag's first `response_words` value words.
///
/// Checks, in order: the buffer code (success, parse error, or not
/// processed), the tag id, the response bit, and that the response length is
/// at least `response_words * 4` bytes. A longer response is accepted (the
/// wiki allows future formats to append data, e.g. more memory ranges); a
/// response longer than the value buffer was truncated by the firmware, but
/// the words asked for are still there. Never panics, whatever the buffer
/// holds.
pub fn decode_response(
    buffer: &[u32],
    tag: Tag,
    response_words: usize,
) -> Result<&[u32], MailboxError> {
    let word = |index: usize| buffer.get(index).copied();
    let code = word(1).ok_or(MailboxError::NoResponse { tag, code: 0 })?;
    match code {
        CODE_SUCCESS => {}
        CODE_PARSE_ERROR => return Err(MailboxError::RequestRejected { tag }),
        other => return Err(MailboxError::NoResponse { tag, code: other }),
    }
    let expected = (response_words * 4) as u32;
    let short = |found| MailboxError::ResponseLength {
        tag,
        expected,
        found,
    };
    let found_tag = word(HEADER_WORDS).ok_or(short(0))?;
    if found_tag != tag as u32 {
        return Err(MailboxError::TagMismatch {
            tag,
            found: found_tag,
        });
    }
    let indicator = word(HEADER_WORDS + 2).ok_or(short(0))?;
    if indicator & TAG_RESPONSE == 0 {
        return Err(MailboxError::TagNotAnswered { tag });
    }
    let length = indicator & !TAG_RESPONSE;
    if length < expected {
        return Err(short(length));
    }
    let value_start = HEADER_WORDS + TAG_HEADER_WORDS;
    buffer
        .get(value_start..value_start + response_words)
        .ok_or(short(length))
}

/// Interprets a Get clock rate response (`clock id, rate`).
pub fn decode_clock_rate(clock: ClockId, value: &[u32]) -> Result<u32, MailboxError> {
    let tag = Tag::GetClockRate;
    match value {
        // "A rate of 0 is returned if the clock does not exist."
        [_, 0] => Err(MailboxError::ClockNotFound { clock }),
        [_, rate] => Ok(*rate),
        _ => Err(MailboxError::ResponseLength {
            tag,
            expected: 8,
            found: (value.len() * 4) as u32,
        }),
    }
}

/// Interprets a Get/Set power state response (`device id, state`): state
/// bit 0 is on/off, bit 1 "device does not exist". Returns whether it is on.
pub fn decode_power_state(
    device: PowerDevice,
    tag: Tag,
    value: &[u32],
) -> Result<bool, MailboxError> {
    match value {
        [_, state] if state & 0b10 != 0 => Err(MailboxError::DeviceNotFound { device }),
        [_, state] => Ok(state & 0b1 != 0),
        _ => Err(MailboxError::ResponseLength {
            tag,
            expected: 8,
            found: (value.len() * 4) as u32,
        }),
    }
}

/// Interprets a Set GPIO config response: its first word is 0 on success.
pub fn decode_gpio_status(line: u32, value: &[u32]) -> Result<(), MailboxError> {
    match value.first() {
        Some(0) => Ok(()),
        Some(&status) => Err(MailboxError::GpioRefused { line, status }),
        None => Err(MailboxError::ResponseLength {
            tag: Tag::SetGpioConfig,
            expected: 4,
            found: 0,
        }),
    }
}

/// The message buffer: 16-byte alignment is the interface's requirement
/// (the low 4 bits of the posted word carry the channel); 64 keeps it on
/// whole Cortex-A72 cache lines, so maintenance never touches neighbours.
#[repr(C, align(64))]
struct MessageBuffer([u32; BUFFER_WORDS]);

/// The property-channel client.
pub struct Mailbox {
    registers: Mmio<RegisterBlock>,
    buffer: MessageBuffer,
}

impl Mailbox {
    /// A client for the mailbox at `base` (normally
    /// [`crate::memory_map::MAILBOX`]), with its message buffer inside.
    ///
    /// # Safety
    ///
    /// - As [`Mmio::new`] for `base`.
    /// - The caller is the only ARM-side user of the mailbox while this value
    ///   exists (another would take our replies).
    /// - Wherever this value is stored, its virtual and physical addresses
    ///   are equal (identity map or MMU off): the VideoCore is given the
    ///   buffer's address as a physical one and writes there. Whether that
    ///   address is in the reachable first GiB is checked on every call.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            // SAFETY: forwarded to the caller (this function's contract).
            registers: unsafe { Mmio::new(base) },
            buffer: MessageBuffer([0; BUFFER_WORDS]),
        }
    }

    /// The ARM physical address of the mailbox registers (for messages).
    pub fn base_address(&self) -> usize {
        self.registers.addr()
    }

    /// Sends one tag and returns its `response_words` value words.
    ///
    /// Bounded: [`WRITE_SPACE_TIMEOUT`] for room to post, [`REPLY_TIMEOUT`]
    /// for the reply.
    pub fn call(
        &mut self,
        tag: Tag,
        request: &[u32],
        response_words: usize,
    ) -> Result<&[u32], MailboxError> {
        encode_request(&mut self.buffer.0, tag, request, response_words)?;
        let address = self.buffer.0.as_ptr() as usize;
        let length = size_of::<MessageBuffer>();
        let bus_address = memory_map::vc_bus_address(address, length)
            .ok_or(MailboxError::BufferUnreachable { address })?;
        let message = bus_address | PROPERTY_CHANNEL;

        // The request must be in RAM, and no line of the buffer in the
        // cache, before the VideoCore reads it and writes its answer.
        compiler_fence(Ordering::SeqCst);
        cache::clean_invalidate_range(address, length);
        self.drain_stale_replies();
        self.post(message)?;
        self.await_reply(message)?;
        // SAFETY: the buffer holds only u32 words (any bit pattern valid);
        // the CPU has not written it since the clean above, so no CPU write
        // is discarded; lines a speculative fetch pulled in meanwhile are
        // dropped so the VideoCore's answer is read from RAM.
        unsafe { cache::invalidate_range(address, length) };
        compiler_fence(Ordering::SeqCst);
        decode_response(&self.buffer.0, tag, response_words)
    }

    /// The firmware revision (a build timestamp).
    pub fn firmware_revision(&mut self) -> Result<u32, MailboxError> {
        self.call_u32(Tag::GetFirmwareRevision)
    }

    /// The board revision code (decoded per the Raspberry Pi documentation's
    /// "Raspberry Pi revision codes"; QEMU answers its `board-rev` property).
    pub fn board_revision(&mut self) -> Result<u32, MailboxError> {
        self.call_u32(Tag::GetBoardRevision)
    }

    /// The board serial number.
    pub fn board_serial(&mut self) -> Result<u64, MailboxError> {
        let value = self.call(Tag::GetBoardSerial, &[], 2)?;
        match value {
            // A little-endian u64: low word first.
            [low, high] => Ok(u64::from(*low) | (u64::from(*high) << 32)),
            _ => Err(Self::short(Tag::GetBoardSerial, 8, value)),
        }
    }

    /// The RAM the firmware leaves to the ARM (the first region; the rest
    /// of RAM above 1 GiB is described by the DTB's memory node).
    pub fn arm_memory(&mut self) -> Result<MemoryRegion, MailboxError> {
        self.call_region(Tag::GetArmMemory)
    }

    /// The RAM the VideoCore keeps for itself.
    pub fn vc_memory(&mut self) -> Result<MemoryRegion, MailboxError> {
        self.call_region(Tag::GetVcMemory)
    }

    /// The current rate of `clock` in Hz.
    pub fn clock_rate(&mut self, clock: ClockId) -> Result<u32, MailboxError> {
        let value = self.call(Tag::GetClockRate, &[clock as u32], 2)?;
        decode_clock_rate(clock, value)
    }

    /// The highest rate `clock` may run at, in Hz (`arm_freq` for the ARM clock).
    pub fn max_clock_rate(&mut self, clock: ClockId) -> Result<u32, MailboxError> {
        let value = self.call(Tag::GetMaxClockRate, &[clock as u32], 2)?;
        decode_clock_rate(clock, value)
    }

    /// Asks the firmware to run `clock` at `rate` Hz and returns the rate it set.
    /// "Skip setting turbo" is 1: only this clock changes, not the core, V3D or
    /// SDRAM clocks the firmware's turbo mode would raise with it (firmware wiki
    /// "Mailbox property interface"), so the UART and EMMC2 base clocks stay as the
    /// firmware set them. The firmware keeps the voltage and thermal limits.
    pub fn set_clock_rate(&mut self, clock: ClockId, rate: u32) -> Result<u32, MailboxError> {
        let value = self.call(Tag::SetClockRate, &[clock as u32, rate, 1], 2)?;
        decode_clock_rate(clock, value)
    }

    /// Makes line `line` (0..8) of the firmware's GPIO expander an output at `high`:
    /// Set GPIO config with no inversion, no termination and the level as the initial
    /// state, as Linux's `rpi_exp_gpio_dir_out` asks (polarity there is the line's own,
    /// 0 on the CM4's `VDD_SD_IO_SEL`).
    pub fn set_expander_output(&mut self, line: u32, high: bool) -> Result<(), MailboxError> {
        let gpio = EXPANDER_GPIO_BASE + line;
        let value = self.call(Tag::SetGpioConfig, &[gpio, 1, 0, 0, 0, u32::from(high)], 1)?;
        decode_gpio_status(line, value)
    }

    /// Whether `device`'s power domain is on.
    pub fn power_state(&mut self, device: PowerDevice) -> Result<bool, MailboxError> {
        let value = self.call(Tag::GetPowerState, &[device as u32], 2)?;
        decode_power_state(device, Tag::GetPowerState, value)
    }

    /// Switches `device`'s power domain on or off. With `wait`, the firmware
    /// answers only once the power is stable (state bit 1 of the request).
    /// The DWC2 needs `set_power_state(PowerDevice::UsbHcd, true, true)` on
    /// the real board before its registers respond.
    pub fn set_power_state(
        &mut self,
        device: PowerDevice,
        on: bool,
        wait: bool,
    ) -> Result<(), MailboxError> {
        let state = u32::from(on) | (u32::from(wait) << 1);
        let value = self.call(Tag::SetPowerState, &[device as u32, state], 2)?;
        if decode_power_state(device, Tag::SetPowerState, value)? == on {
            Ok(())
        } else {
            Err(MailboxError::PowerStateNotReached {
                device,
                requested_on: on,
            })
        }
    }

    fn call_u32(&mut self, tag: Tag) -> Result<u32, MailboxError> {
        let value = self.call(tag, &[], 1)?;
        match value {
            [word] => Ok(*word),
            _ => Err(Self::short(tag, 4, value)),
        }
    }

    fn call_region(&mut self, tag: Tag) -> Result<MemoryRegion, MailboxError> {
        let value = self.call(tag, &[], 2)?;
        match value {
            [base, size] => Ok(MemoryRegion {
                base: *base,
                size: *size,
            }),
            _ => Err(Self::short(tag, 8, value)),
        }
    }

    fn short(tag: Tag, expected: u32, value: &[u32]) -> MailboxError {
        MailboxError::ResponseLength {
            tag,
            expected,
            found: (value.len() * 4) as u32,
        }
    }

    /// Drops replies left in mailbox 0 by an earlier call that timed out, so
    /// they are not taken for the answer to this one.
    fn drain_stale_replies(&self) {
        for _ in 0..MAILBOX_DEPTH {
            if self.registers.mail0_status.is_set(STATUS::EMPTY) {
                break;
            }
            let _ = self.registers.mail0_read.get();
        }
    }

    fn post(&self, message: u32) -> Result<(), MailboxError> {
        let deadline = Deadline::after(WRITE_SPACE_TIMEOUT);
        while self.registers.mail1_status.is_set(STATUS::FULL) {
            if deadline.expired() {
                return Err(MailboxError::Timeout {
                    awaiting: MailboxWait::WriteSpace,
                });
            }
            spin_loop();
        }
        self.registers.mail1_write.set(message);
        Ok(())
    }

    fn await_reply(&self, message: u32) -> Result<(), MailboxError> {
        let deadline = Deadline::after(REPLY_TIMEOUT);
        loop {
            // Replies for other channels (or stale ones) are dropped. The
            // deadline is checked on every pass, not only while the FIFO is
            // empty: a mailbox that keeps reporting foreign or garbage
            // words must not keep us here forever.
            if !self.registers.mail0_status.is_set(STATUS::EMPTY)
                && self.registers.mail0_read.get() == message
            {
                return Ok(());
            }
            if deadline.expired() {
                return Err(MailboxError::Timeout {
                    awaiting: MailboxWait::Reply,
                });
            }
            spin_loop();
        }
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("registers", &self.registers)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the firmware: writes a success reply with `value` for the tag
    /// in an encoded buffer.
    fn answer(buffer: &mut [u32], value: &[u32]) {
        buffer[1] = CODE_SUCCESS;
        buffer[4] = TAG_RESPONSE | (value.len() * 4) as u32;
        buffer[5..5 + value.len()].copy_from_slice(value);
    }

    #[test]
    fn encodes_a_request_without_arguments() {
        let mut buffer = [0xffff_ffff; BUFFER_WORDS];
        let words = encode_request(&mut buffer, Tag::GetBoardRevision, &[], 1).unwrap();
        assert_eq!(words, 8);
        assert_eq!(&buffer[..8], &[32, 0, 0x0001_0002, 4, 0, 0, 0, 0]);
        // Untouched past the message.
        assert_eq!(buffer[8], 0xffff_ffff);
    }

    #[test]
    fn a_gpio_expander_request_carries_six_words_and_its_status_decides() {
        let mut buffer = [0; BUFFER_WORDS];
        let words =
            encode_request(&mut buffer, Tag::SetGpioConfig, &[132, 1, 0, 0, 0, 0], 1).unwrap();
        assert_eq!(words, 12);
        assert_eq!(
            &buffer[..12],
            &[48, 0, 0x0003_8043, 24, 24, 132, 1, 0, 0, 0, 0, 0]
        );
        answer(&mut buffer, &[0]);
        let value = decode_response(&buffer, Tag::SetGpioConfig, 1).unwrap();
        assert_eq!(decode_gpio_status(4, value), Ok(()));
        assert_eq!(
            decode_gpio_status(4, &[0x8000_0000]),
            Err(MailboxError::GpioRefused {
                line: 4,
                status: 0x8000_0000
            })
        );
        assert!(decode_gpio_status(4, &[]).is_err());
    }

    #[test]
    fn encodes_a_request_with_arguments() {
        let mut buffer = [0; BUFFER_WORDS];
        let words = encode_request(&mut buffer, Tag::SetPowerState, &[3, 0b11], 2).unwrap();
        assert_eq!(words, 8);
        assert_eq!(&buffer[..8], &[32, 0, 0x0002_8001, 8, 8, 3, 0b11, 0]);
    }

    #[test]
    fn rejects_a_request_that_does_not_fit() {
        let mut buffer = [0; 8];
        assert_eq!(
            encode_request(&mut buffer, Tag::GetClockRate, &[1], 4),
            Err(MailboxError::RequestTooLarge {
                tag: Tag::GetClockRate
            })
        );
    }

    #[test]
    fn decodes_a_successful_response() {
        let mut buffer = [0; BUFFER_WORDS];
        encode_request(&mut buffer, Tag::GetClockRate, &[ClockId::Emmc2 as u32], 2).unwrap();
        answer(&mut buffer, &[12, 100_000_000]);
        let value = decode_response(&buffer, Tag::GetClockRate, 2).unwrap();
        assert_eq!(value, &[12, 100_000_000]);
        assert_eq!(decode_clock_rate(ClockId::Emmc2, value), Ok(100_000_000));
    }

    #[test]
    fn firmware_error_code() {
        let mut buffer = [0; BUFFER_WORDS];
        encode_request(&mut buffer, Tag::GetBoardSerial, &[], 2).unwrap();
        buffer[1] = CODE_PARSE_ERROR;
        assert_eq!(
            decode_response(&buffer, Tag::GetBoardSerial, 2),
            Err(MailboxError::RequestRejected {
                tag: Tag::GetBoardSerial
            })
        );
    }

    #[test]
    fn unprocessed_buffer() {
        let mut buffer = [0; BUFFER_WORDS];
        encode_request(&mut buffer, Tag::GetBoardRevision, &[], 1).unwrap();
        assert_eq!(
            decode_response(&buffer, Tag::GetBoardRevision, 1),
            Err(MailboxError::NoResponse {
                tag: Tag::GetBoardRevision,
                code: 0
            })
        );
    }

    #[test]
    fn response_too_short() {
        let mut buffer = [0; BUFFER_WORDS];
        encode_request(&mut buffer, Tag::GetArmMemory, &[], 2).unwrap();
        answer(&mut buffer, &[0]);
        assert_eq!(
            decode_response(&buffer, Tag::GetArmMemory, 2),
            Err(MailboxError::ResponseLength {
                tag: Tag::GetArmMemory,
                expected: 8,
                found: 4
            })
        );
    }

    #[test]
    fn longer_response_is_accepted() {
        let mut buffer = [0; BUFFER_WORDS];
        encode_request(&mut buffer, Tag::GetArmMemory, &[], 2).unwrap();
        answer(&mut buffer, &[0, 0x3b40_0000, 0x4000_0000, 0x4000_0000]);
        assert_eq!(
            decode_response(&buffer, Tag::GetArmMemory, 2),
            Ok(&[0, 0x3b40_0000][..])
        );
    }

    #[test]
    fn tag_not_answered_and_wrong_tag() {
        let mut buffer = [0; BUFFER_WORDS];
        encode_request(&mut buffer, Tag::GetBoardModel, &[], 1).unwrap();
        buffer[1] = CODE_SUCCESS;
        assert_eq!(
            decode_response(&buffer, Tag::GetBoardModel, 1),
            Err(MailboxError::TagNotAnswered {
                tag: Tag::GetBoardModel
            })
        );
        buffer[2] = 0x0001_0003;
        assert_eq!(
            decode_response(&buffer, Tag::GetBoardModel, 1),
            Err(MailboxError::TagMismatch {
                tag: Tag::GetBoardModel,
                found: 0x0001_0003
            })
        );
    }

    #[test]
    fn garbage_never_panics() {
        for length in 0..12 {
            let buffer: [u32; 12] =
                core::array::from_fn(|i| if i == 1 { CODE_SUCCESS } else { u32::MAX });
            let result = decode_response(&buffer[..length], Tag::GetVcMemory, 2);
            assert!(result.is_err(), "length {length}: {result:?}");
        }
        // A huge claimed length within a short buffer.
        let buffer = [
            0,
            CODE_SUCCESS,
            Tag::GetVcMemory as u32,
            8,
            TAG_RESPONSE | 0x7fff_ffff,
        ];
        assert!(decode_response(&buffer, Tag::GetVcMemory, 2).is_err());
    }

    #[test]
    fn clock_rate_zero_means_no_such_clock() {
        assert_eq!(
            decode_clock_rate(ClockId::Pwm, &[10, 0]),
            Err(MailboxError::ClockNotFound {
                clock: ClockId::Pwm
            })
        );
    }

    #[test]
    fn power_state_bits() {
        let tag = Tag::SetPowerState;
        assert_eq!(
            decode_power_state(PowerDevice::UsbHcd, tag, &[3, 1]),
            Ok(true)
        );
        assert_eq!(
            decode_power_state(PowerDevice::UsbHcd, tag, &[3, 0]),
            Ok(false)
        );
        assert_eq!(
            decode_power_state(PowerDevice::Ccp2tx, tag, &[8, 0b10]),
            Err(MailboxError::DeviceNotFound {
                device: PowerDevice::Ccp2tx
            })
        );
    }
}
