//! GPIO: function select, output set/clear, level read, BCM2711 pulls, and the ACT LED.
//!
//! Registers and encodings: BCM2711 ARM Peripherals §5.2 "Register View"
//! (`GPFSELn`: 3 bits per pin, 10 pins per register; GPSETn/GPCLRn/GPLEVn: one
//! bit per pin, 32 per register; `GPIO_PUP_PDN_CNTRL_REGn` at 0xe4: 2 bits per
//! pin, 16 per register), cross-checked with Linux
//! `drivers/pinctrl/bcm/pinctrl-bcm2835.c` (`FSEL_REG`, `GPIO_REG_OFFSET`,
//! `GP_GPIO_PUP_PDN_CNTRL_REG0 0xe4`, `PUD_2711_REG_SHIFT`).
//!
//! The BCM2711 has 58 GPIOs (0..=57; Linux `BCM2711_NUM_GPIOS`). Its pull
//! control differs from the BCM2835's: the GPPUD/GPPUDCLK sequence is gone,
//! and the 2-bit code is 0 none, 1 *up*, 2 *down* (Linux `BCM2711_PULL_*`),
//! where the BCM2835's GPPUD used 0 off, 1 *down*, 2 *up* (Linux
//! `include/dt-bindings/pinctrl/bcm2835.h`, `BCM2835_PUD_*`).

use core::fmt;

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

use crate::mmio::Mmio;

/// The highest GPIO number on the BCM2711.
pub const LAST_PIN: u8 = 57;

register_structs! {
    /// GPIO registers (BCM2711 ARM Peripherals §5.2).
    pub RegisterBlock {
        /// GPIO Function Select 0..5.
        (0x00 => pub gpfsel: [ReadWrite<u32>; 6]),
        (0x18 => _reserved0),
        /// GPIO Pin Output Set 0..1.
        (0x1c => pub gpset: [WriteOnly<u32>; 2]),
        (0x24 => _reserved1),
        /// GPIO Pin Output Clear 0..1.
        (0x28 => pub gpclr: [WriteOnly<u32>; 2]),
        (0x30 => _reserved2),
        /// GPIO Pin Level 0..1.
        (0x34 => pub gplev: [ReadOnly<u32>; 2]),
        (0x3c => _reserved3),
        /// GPIO Pin Event Detect Status 0..1.
        (0x40 => pub gpeds: [ReadWrite<u32>; 2]),
        (0x48 => _reserved4),
        /// GPIO Pin Rising Edge Detect Enable 0..1.
        (0x4c => pub gpren: [ReadWrite<u32>; 2]),
        (0x54 => _reserved5),
        /// GPIO Pin Falling Edge Detect Enable 0..1.
        (0x58 => pub gpfen: [ReadWrite<u32>; 2]),
        (0x60 => _reserved6),
        /// GPIO Pin High Detect Enable 0..1.
        (0x64 => pub gphen: [ReadWrite<u32>; 2]),
        (0x6c => _reserved7),
        /// GPIO Pin Low Detect Enable 0..1.
        (0x70 => pub gplen: [ReadWrite<u32>; 2]),
        (0x78 => _reserved8),
        /// GPIO Pin Async. Rising Edge Detect 0..1.
        (0x7c => pub gparen: [ReadWrite<u32>; 2]),
        (0x84 => _reserved9),
        /// GPIO Pin Async. Falling Edge Detect 0..1.
        (0x88 => pub gpafen: [ReadWrite<u32>; 2]),
        /// BCM2835 GPPUD/GPPUDCLK lived here; not connected on the BCM2711.
        (0x90 => _reserved10),
        /// GPIO Pull-up / Pull-down Register 0..3. BCM2711-only.
        (0xe4 => pub gpio_pup_pdn_cntrl: [ReadWrite<u32>; 4]),
        (0xf4 => @END),
    }
}

/// GPIO errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpioError {
    /// The BCM2711 has GPIOs 0..=57 only.
    PinOutOfRange { pin: u8 },
}

impl fmt::Display for GpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PinOutOfRange { pin } => write!(f, "GPIO {pin} does not exist (0..={LAST_PIN})"),
        }
    }
}

/// A GPIO number checked to exist on the BCM2711.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pin(u8);

impl Pin {
    /// GPIO `number`, if it exists.
    pub const fn new(number: u8) -> Result<Self, GpioError> {
        if number > LAST_PIN {
            return Err(GpioError::PinOutOfRange { pin: number });
        }
        Ok(Self(number))
    }

    /// The GPIO number.
    pub const fn number(self) -> u8 {
        self.0
    }

    /// `GPFSELn` index and bit shift of this pin's 3-bit function field.
    pub const fn function_select_location(self) -> (usize, u32) {
        ((self.0 / 10) as usize, (self.0 % 10) as u32 * 3)
    }

    /// Bank index (GPSETn/GPCLRn/GPLEVn) and bit mask of this pin.
    pub const fn bank_bit(self) -> (usize, u32) {
        ((self.0 / 32) as usize, 1 << (self.0 % 32))
    }

    /// `GPIO_PUP_PDN_CNTRL_REGn` index and bit shift of this pin's 2-bit field.
    pub const fn pull_location(self) -> (usize, u32) {
        ((self.0 / 16) as usize, (self.0 % 16) as u32 * 2)
    }
}

/// A pin function (`GPFSELn` field, BCM2711 ARM Peripherals §5.2; the
/// alternate-function codes are not in order: Linux `enum bcm2835_fsel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Function {
    /// 000: GPIO pin is an input.
    Input = 0b000,
    /// 001: GPIO pin is an output.
    Output = 0b001,
    /// 100: alternate function 0.
    Alt0 = 0b100,
    /// 101: alternate function 1.
    Alt1 = 0b101,
    /// 110: alternate function 2.
    Alt2 = 0b110,
    /// 111: alternate function 3.
    Alt3 = 0b111,
    /// 011: alternate function 4.
    Alt4 = 0b011,
    /// 010: alternate function 5.
    Alt5 = 0b010,
}

impl Function {
    /// The function a 3-bit GPFSEL field selects (every code is defined).
    pub const fn from_bits(bits: u32) -> Self {
        match bits & 0b111 {
            0b000 => Self::Input,
            0b001 => Self::Output,
            0b100 => Self::Alt0,
            0b101 => Self::Alt1,
            0b110 => Self::Alt2,
            0b111 => Self::Alt3,
            0b011 => Self::Alt4,
            _ => Self::Alt5,
        }
    }
}

/// A pin's pull resistor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    /// No resistor.
    None,
    /// Pull-up.
    Up,
    /// Pull-down.
    Down,
}

impl Pull {
    /// The BCM2711 `GPIO_PUP_PDN_CNTRL` code: 00 none, 01 up, 10 down.
    pub const fn bcm2711_bits(self) -> u32 {
        match self {
            Self::None => 0b00,
            Self::Up => 0b01,
            Self::Down => 0b10,
        }
    }

    /// Decodes a BCM2711 pull code; `None` for the reserved code 11.
    pub const fn from_bcm2711_bits(bits: u32) -> Option<Self> {
        match bits & 0b11 {
            0b00 => Some(Self::None),
            0b01 => Some(Self::Up),
            0b10 => Some(Self::Down),
            _ => None,
        }
    }
}

/// Replaces the `width`-bit field at `shift` in `word` with `value` (pure).
const fn with_field(word: u32, shift: u32, width: u32, value: u32) -> u32 {
    let mask = ((1 << width) - 1) << shift;
    (word & !mask) | ((value << shift) & mask)
}

/// The GPIO block.
pub struct Gpio {
    registers: Mmio<RegisterBlock>,
}

impl Gpio {
    /// A driver for the GPIO block at `base` (normally
    /// [`crate::memory_map::GPIO`]).
    ///
    /// # Safety
    ///
    /// As [`Mmio::new`]. Function and pull changes read-modify-write a
    /// register shared by 10 or 16 pins: no two instances (or cores) may
    /// change pins of the same register at once. Set/clear/level accesses
    /// are single writes/reads and need no exclusivity.
    pub const unsafe fn new(base: usize) -> Self {
        // SAFETY: forwarded to the caller (this function's contract).
        let registers = unsafe { Mmio::new(base) };
        Self { registers }
    }

    /// Selects `function` for `pin`.
    pub fn set_function(&self, pin: Pin, function: Function) {
        let (index, shift) = pin.function_select_location();
        let register = &self.registers.gpfsel[index];
        register.set(with_field(register.get(), shift, 3, function as u32));
    }

    /// The function `pin` is set to.
    pub fn function(&self, pin: Pin) -> Function {
        let (index, shift) = pin.function_select_location();
        Function::from_bits(self.registers.gpfsel[index].get() >> shift)
    }

    /// Sets `pin`'s pull resistor (BCM2711 encoding; no clocking sequence).
    pub fn set_pull(&self, pin: Pin, pull: Pull) {
        let (index, shift) = pin.pull_location();
        let register = &self.registers.gpio_pup_pdn_cntrl[index];
        register.set(with_field(register.get(), shift, 2, pull.bcm2711_bits()));
    }

    /// `pin`'s pull resistor, `None` if the register holds the reserved code.
    pub fn pull(&self, pin: Pin) -> Option<Pull> {
        let (index, shift) = pin.pull_location();
        Pull::from_bcm2711_bits(self.registers.gpio_pup_pdn_cntrl[index].get() >> shift)
    }

    /// Drives `pin` high (if it is an output). A single write to `GPSETn`:
    /// other pins are unaffected ("writing a 0 has no effect").
    pub fn set_high(&self, pin: Pin) {
        let (bank, bit) = pin.bank_bit();
        self.registers.gpset[bank].set(bit);
    }

    /// Drives `pin` low (if it is an output), via `GPCLRn`.
    pub fn set_low(&self, pin: Pin) {
        let (bank, bit) = pin.bank_bit();
        self.registers.gpclr[bank].set(bit);
    }

    /// Drives `pin` high or low.
    pub fn set_level(&self, pin: Pin, high: bool) {
        if high {
            self.set_high(pin);
        } else {
            self.set_low(pin);
        }
    }

    /// The level on `pin` (`GPLEVn`), whatever its function.
    pub fn is_high(&self, pin: Pin) -> bool {
        let (bank, bit) = pin.bank_bit();
        self.registers.gplev[bank].get() & bit != 0
    }

    /// Routes PL011 UART0 to the header pins: GPIO 14 = TXD0 and GPIO 15 =
    /// RXD0 on alternate function 0 (BCM2711 ARM Peripherals §5.3,
    /// "Alternative Function Assignments"). The Pi firmware gives these pins
    /// to the mini UART unless config.txt says `dtoverlay=disable-bt` (or
    /// `miniuart-bt`); calling this makes the console independent of that.
    pub fn route_uart0_to_gpio14_15(&self) {
        self.set_function(UART0_TXD, Function::Alt0);
        self.set_function(UART0_RXD, Function::Alt0);
    }
}

impl fmt::Debug for Gpio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gpio")
            .field("registers", &self.registers)
            .finish()
    }
}

const fn pin(number: u8) -> Pin {
    match Pin::new(number) {
        Ok(pin) => pin,
        Err(_) => panic!("pin constant out of range"),
    }
}

/// GPIO 14: TXD0 on alternate function 0.
pub const UART0_TXD: Pin = pin(14);
/// GPIO 15: RXD0 on alternate function 0.
pub const UART0_RXD: Pin = pin(15);

/// The green activity LED: GPIO 42, active high, on both the Pi 4 Model B
/// and the CM4 — `&led_act { gpios = <&gpio 42 GPIO_ACTIVE_HIGH>; }` in
/// Linux `arch/arm/boot/dts/broadcom/bcm2711-rpi-4-b.dts` and in the
/// Raspberry Pi kernel's `bcm2711-rpi-cm4.dts`. On the CM4 the LED sits on
/// the carrier board, behind the module's activity-LED pin; the SoC-side
/// GPIO and polarity are the DTS's (that pin's wiring on the module was not
/// checked against the CM4 datasheet).
pub const ACT_LED: Pin = pin(42);

/// The activity LED.
#[derive(Debug)]
pub struct ActLed<'a> {
    gpio: &'a Gpio,
    pin: Pin,
    active_high: bool,
}

impl<'a> ActLed<'a> {
    /// The Pi 4/CM4 activity LED ([`ACT_LED`], active high); makes the pin
    /// an output and switches the LED off.
    pub fn new(gpio: &'a Gpio) -> Self {
        Self::with_pin(gpio, ACT_LED, true)
    }

    /// An LED on another pin (a carrier board's own), with its polarity.
    pub fn with_pin(gpio: &'a Gpio, pin: Pin, active_high: bool) -> Self {
        let led = Self {
            gpio,
            pin,
            active_high,
        };
        led.off();
        gpio.set_function(pin, Function::Output);
        led
    }

    /// Lights the LED.
    pub fn on(&self) {
        self.set(true);
    }

    /// Switches the LED off.
    pub fn off(&self) {
        self.set(false);
    }

    /// Lights the LED or switches it off.
    pub fn set(&self, lit: bool) {
        self.gpio.set_level(self.pin, lit == self.active_high);
    }
}

/// A push button on an input pin, with the pull resistor that holds the
/// pin at its released level: a button to ground (active low) gets the
/// pull-up, a button to 3.3 V (active high) the pull-down.
#[derive(Debug)]
pub struct Button<'a> {
    gpio: &'a Gpio,
    pin: Pin,
    active_high: bool,
}

impl<'a> Button<'a> {
    /// Makes `pin` an input with the pull for its polarity. The level is
    /// only meaningful once the pull has charged the line: wait
    /// [`Button::SETTLE`] before the first [`Button::is_pressed`].
    pub fn new(gpio: &'a Gpio, pin: Pin, active_high: bool) -> Self {
        gpio.set_function(pin, Function::Input);
        gpio.set_pull(pin, if active_high { Pull::Down } else { Pull::Up });
        Self {
            gpio,
            pin,
            active_high,
        }
    }

    /// Long enough for the ~50 kOhm pull to charge a button's line and pad
    /// (tens of pF: a microsecond time constant) many times over.
    pub const SETTLE: core::time::Duration = core::time::Duration::from_millis(1);

    /// The pin.
    pub fn pin(&self) -> Pin {
        self.pin
    }

    /// Whether the button is pressed now (one sample, no debouncing).
    pub fn is_pressed(&self) -> bool {
        self.gpio.is_high(self.pin) == self.active_high
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_range() {
        assert_eq!(Pin::new(0).map(Pin::number), Ok(0));
        assert_eq!(Pin::new(57).map(Pin::number), Ok(57));
        assert_eq!(Pin::new(58), Err(GpioError::PinOutOfRange { pin: 58 }));
        assert_eq!(Pin::new(255), Err(GpioError::PinOutOfRange { pin: 255 }));
    }

    #[test]
    fn register_locations() {
        let p = |n| Pin::new(n).unwrap();
        assert_eq!(p(0).function_select_location(), (0, 0));
        assert_eq!(p(14).function_select_location(), (1, 12));
        assert_eq!(p(42).function_select_location(), (4, 6));
        assert_eq!(p(57).function_select_location(), (5, 21));
        assert_eq!(p(31).bank_bit(), (0, 1 << 31));
        assert_eq!(p(42).bank_bit(), (1, 1 << 10));
        assert_eq!(p(15).pull_location(), (0, 30));
        assert_eq!(p(16).pull_location(), (1, 0));
        assert_eq!(p(57).pull_location(), (3, 18));
    }

    #[test]
    fn function_codes_round_trip() {
        for function in [
            Function::Input,
            Function::Output,
            Function::Alt0,
            Function::Alt1,
            Function::Alt2,
            Function::Alt3,
            Function::Alt4,
            Function::Alt5,
        ] {
            assert_eq!(Function::from_bits(function as u32), function);
        }
        assert_eq!(Function::Alt4 as u8, 0b011);
        assert_eq!(Function::Alt5 as u8, 0b010);
    }

    #[test]
    fn bcm2711_pull_encoding_differs_from_bcm2835() {
        assert_eq!(Pull::Up.bcm2711_bits(), 0b01);
        assert_eq!(Pull::Down.bcm2711_bits(), 0b10);
        assert_eq!(Pull::None.bcm2711_bits(), 0b00);
        assert_eq!(Pull::from_bcm2711_bits(0b11), None);
        for pull in [Pull::None, Pull::Up, Pull::Down] {
            assert_eq!(Pull::from_bcm2711_bits(pull.bcm2711_bits()), Some(pull));
        }
    }

    #[test]
    fn field_replacement_keeps_neighbours() {
        assert_eq!(with_field(0xffff_ffff, 6, 3, 0b001), 0xffff_fe7f);
        assert_eq!(with_field(0, 30, 2, 0b10), 0x8000_0000);
        assert_eq!(with_field(0x1234_5678, 0, 3, 0b1111), 0x1234_567f);
    }

    #[test]
    fn act_led_is_gpio_42() {
        assert_eq!(ACT_LED.number(), 42);
    }
}
