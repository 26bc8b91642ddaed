//! The console: `log` records on the PL011, each stamped with the time since reset.

use core::fmt::{self, Write};

use hal_bcm2711::generic_timer;
use hal_bcm2711::pl011::Pl011Uart;
use spin::Mutex;

/// The baud rate of the Pi firmware's console (config.txt `enable_uart=1`).
const BAUD: u32 = 115_200;

struct Console {
    uart: Mutex<Option<Pl011Uart>>,
}

static CONSOLE: Console = Console {
    uart: Mutex::new(None),
};

/// Turns CR-less text into CR LF for the serial terminal.
struct CrLf<'a>(&'a mut Pl011Uart);

impl Write for CrLf<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for (index, line) in text.split('\n').enumerate() {
            if index > 0 {
                self.0.write_bytes(b"\r\n");
            }
            self.0.write_bytes(line.as_bytes());
        }
        Ok(())
    }
}

impl log::Log for Console {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut uart = self.uart.lock();
        let Some(uart) = uart.as_mut() else { return };
        // The counter starts at 0 at reset, so this is the time since power-on.
        let uptime = generic_timer::Instant::from_ticks(0).elapsed();
        let level = match record.level() {
            log::Level::Error => "ERROR",
            log::Level::Warn => "WARN ",
            log::Level::Info => "INFO ",
            log::Level::Debug => "DEBUG",
            log::Level::Trace => "TRACE",
        };
        let _ = writeln!(
            CrLf(uart),
            "[{:4}.{:06}] {level} {}",
            uptime.as_secs(),
            uptime.subsec_micros(),
            record.args()
        );
    }

    fn flush(&self) {
        if let Some(uart) = self.uart.lock().as_ref() {
            let _ = uart.flush();
        }
    }
}

/// Programs the UART and routes `log` to it. Without a UART (already taken)
/// logging stays silent rather than failing the boot.
pub fn init(uart: Option<Pl011Uart>, reference_clock_hz: u32) {
    if let Some(uart) = uart {
        // A clock that cannot make 115200 baud leaves the firmware's
        // settings in place: a console we cannot program must not stop the
        // boot.
        let _ = uart.init(reference_clock_hz, BAUD);
        *CONSOLE.uart.lock() = Some(uart);
    }
    if log::set_logger(&CONSOLE).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Waits until everything logged so far has left the UART.
#[cfg_attr(not(feature = "qemu-test"), allow(dead_code))]
pub fn flush() {
    log::logger().flush();
}
