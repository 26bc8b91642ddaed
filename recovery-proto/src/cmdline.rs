//! The kernel command line handed to Linux: the slot's `cmdline.txt` with zboot's own tokens.
//!
//! From the slot's `cmdline.txt` every `root=`, `zboot.slot=` and `zboot.attempt=` is removed,
//! then `root=PARTUUID=<id> zboot.slot=<A|B|SAFE> zboot.attempt=<n>` is appended (and
//! `panic=<s>` when the hang guard asks for it and the line has no `panic=`). Words are split
//! the way Linux's `next_arg()` (`lib/cmdline.c`) splits them: at spaces and tabs outside
//! double quotes, so `foo="a root=b"` is one word and keeps its quoted text. Everything after a
//! lone `--` belongs to init (Linux `init/main.c`), so zboot's words go before it and words
//! there are left alone.
//!
//! The firmware's own parameters come first: the words of its `/chosen/bootargs`
//! (`8250.nr_uarts=1`, `coherent_pool=`, `snd_bcm2835.*`, `vc_mem.*`, ...), without its
//! `root=` and `initrd=`, zboot's `zboot.*` keys, anything after its `--`, and any key the
//! slot's line sets itself (the slot wins). The Raspberry Pi kernel needs some of them: with
//! `CONFIG_SERIAL_8250_RUNTIME_UARTS=0` it has no ttyS0 without `8250.nr_uarts=1`.
//!
//! Pure and allocation-free: the result is written into a caller's buffer.

use core::fmt::{self, Write};

use crate::slot::Slot;

/// Linux arm64's `COMMAND_LINE_SIZE` (`arch/arm64/include/uapi/asm/setup.h`): the kernel keeps
/// at most this many bytes *including* the terminating NUL and silently truncates the rest,
/// which could cut off `root=`. So the line built here is at most `COMMAND_LINE_SIZE - 1` bytes.
pub const COMMAND_LINE_SIZE: usize = 2048;

/// The longest line [`build`] produces (without the NUL a DTB string property adds).
pub const MAX_LENGTH: usize = COMMAND_LINE_SIZE - 1;

/// Words zboot owns: removed from `cmdline.txt` before its own are appended.
pub const OWNED_KEYS: [&str; 3] = ["root", "zboot.slot", "zboot.attempt"];

/// What the loader adds to the slot's command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootArgs<'a> {
    /// The slot root's PARTUUID as Linux prints it (`1a2b3c4d-02`, or a GPT GUID).
    pub root_partuuid: &'a str,
    /// The slot being booted.
    pub slot: Slot,
    /// Which attempt of this slot this boot is (1 = first).
    pub attempt: u8,
    /// `panic=<s>` (reboot `s` seconds after a panic) when the hang guard is on; only added
    /// when the line has no `panic=` of its own.
    pub panic_seconds: Option<u32>,
    /// The Linux names of the primary and secondary UART (`ttyS0`, `ttyAMA0`), which
    /// `console=serial0` and `console=serial1` are translated to, as the Pi firmware does
    /// before Linux sees the line (Linux has no device called `serial0`). `None`: that
    /// name is left as written. See [`serial_console`].
    pub serial: [Option<&'a str>; 2],
    /// The firmware's `/chosen/bootargs`, whose parameters go ahead of the slot's line
    /// (see the module documentation); `None` when the firmware passed none.
    pub firmware: Option<&'a str>,
}

/// Keys of the firmware's command line that are never passed on: its root and initrd
/// (zboot names the slot's root and hands over the slot's initrd).
pub const FIRMWARE_DROPPED_KEYS: [&str; 2] = ["root", "initrd"];

/// Writes the firmware's parameters that `line` (the slot's or stock line) does not set:
/// see the module documentation. A firmware line that is not one clean line (a control
/// character, an unclosed quote) is left out whole.
fn firmware_words(writer: &mut Writer<'_>, firmware: Option<&str>, line: &str) {
    let Some(Ok(firmware)) = firmware.map(|text| check_line(text.as_bytes())) else {
        return;
    };
    let set_by_line = |wanted: &str| {
        words(line)
            .take_while(|word| *word != "--")
            .any(|word| key(word) == wanted)
    };
    for word in words(firmware) {
        if word == "--" {
            break;
        }
        let name = key(word);
        if FIRMWARE_DROPPED_KEYS.contains(&name) || name.starts_with("zboot.") || set_by_line(name)
        {
            continue;
        }
        writer.word(word);
    }
}

/// The Linux name of a BCM2711 UART, from the `compatible` (first string) and the node's
/// unit address in the device tree: the first PL011 (UART0, `serial@7e201000`) is
/// `ttyAMA0`, the mini UART (UART1, `brcm,bcm2835-aux-uart`) is `ttyS0` (Raspberry Pi
/// documentation, `configuration/uart.adoc`, "Linux devices on Raspberry Pi OS"). Other
/// UARTs (the extra PL011s of `dtoverlay=uart2`...) are numbered by the order the kernel
/// probes them, which zboot cannot know: `None`.
#[must_use]
pub fn bcm2711_uart_tty(compatible: &str, unit_address: &str) -> Option<&'static str> {
    match compatible {
        "arm,pl011" if unit_address.eq_ignore_ascii_case("7e201000") => Some("ttyAMA0"),
        "brcm,bcm2835-aux-uart" => Some("ttyS0"),
        _ => None,
    }
}

/// `console=serialN[,options]` with `serial` naming the ttys: the word rewritten to
/// `console=<tty>[,options]`, or `None` when the word is not such a console or the tty is
/// unknown.
#[must_use]
pub fn serial_console<'w>(word: &'w str, serial: &[Option<&'w str>; 2]) -> Option<[&'w str; 2]> {
    let value = word.strip_prefix("console=serial")?;
    let (index, rest) = value.split_at_checked(1)?;
    if !(rest.is_empty() || rest.starts_with(',')) {
        return None;
    }
    let tty = match index {
        "0" => serial.first().copied().flatten(),
        "1" => serial.get(1).copied().flatten(),
        _ => None,
    }?;
    Some([tty, rest])
}

/// Why no command line could be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    /// `cmdline.txt` is not valid UTF-8 from this byte offset on.
    InvalidUtf8 { offset: usize },
    /// A NUL, line break or other control character (tab is allowed) at this offset.
    ControlCharacter { offset: usize, byte: u8 },
    /// A double quote at this offset is never closed: zboot's words would end up inside it.
    UnbalancedQuote { offset: usize },
    /// The PARTUUID holds something other than hex digits and dashes (or nothing).
    BadPartUuid,
    /// The result would be `length` bytes; Linux keeps at most `max` (or the buffer is smaller).
    TooLong { length: usize, max: usize },
}

impl core::error::Error for CmdlineError {}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CmdlineError::InvalidUtf8 { offset } => {
                write!(f, "cmdline.txt: not valid UTF-8 at byte {offset}")
            }
            CmdlineError::ControlCharacter { offset, byte } => write!(
                f,
                "cmdline.txt: control character {byte:#04x} at byte {offset} (the file must be one line)"
            ),
            CmdlineError::UnbalancedQuote { offset } => {
                write!(f, "cmdline.txt: the quote at byte {offset} is never closed")
            }
            CmdlineError::BadPartUuid => f.write_str("root PARTUUID must be hex digits and dashes"),
            CmdlineError::TooLong { length, max } => write!(
                f,
                "kernel command line would be {length} bytes, at most {max} fit"
            ),
        }
    }
}

/// Checks the bytes of `cmdline.txt` and returns the line without trailing newline, carriage
/// return and blanks.
pub fn check_line(input: &[u8]) -> Result<&str, CmdlineError> {
    let text = core::str::from_utf8(input).map_err(|e| CmdlineError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let text = text.trim_end_matches(['\n', '\r', ' ', '\t']);
    if let Some((offset, byte)) = text
        .bytes()
        .enumerate()
        .find(|&(_, b)| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(CmdlineError::ControlCharacter { offset, byte });
    }
    let mut open = None;
    for (offset, byte) in text.bytes().enumerate() {
        if byte == b'"' {
            open = if open.is_some() { None } else { Some(offset) };
        }
    }
    if let Some(offset) = open {
        return Err(CmdlineError::UnbalancedQuote { offset });
    }
    Ok(text)
}

/// Splits a checked line into words as Linux does: at blanks outside double quotes.
pub fn words(line: &str) -> impl Iterator<Item = &str> {
    let mut rest = line;
    core::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                !quoted && (c == ' ' || c == '\t')
            })
            .map_or(rest.len(), |(i, _)| i);
        let (word, tail) = rest.split_at_checked(end).unwrap_or((rest, ""));
        rest = tail;
        Some(word)
    })
}

/// A word's parameter name: before the first `=`, without a leading quote
/// (`"root=a b"` is `root`).
pub fn key(word: &str) -> &str {
    let word = word.strip_prefix('"').unwrap_or(word);
    word.split_once('=').map_or(word, |(k, _)| k)
}

/// Builds the final command line into `out` and returns it.
pub fn build<'o>(
    cmdline_txt: &[u8],
    args: &BootArgs<'_>,
    out: &'o mut [u8],
) -> Result<&'o str, CmdlineError> {
    let line = check_line(cmdline_txt)?;
    if args.root_partuuid.is_empty()
        || !args
            .root_partuuid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        return Err(CmdlineError::BadPartUuid);
    }
    let max = out.len().min(MAX_LENGTH);
    let mut writer = Writer {
        out,
        length: 0,
        max,
    };
    firmware_words(&mut writer, args.firmware, line);
    let mut all = words(line);
    let mut has_panic = false;
    let mut init_words = false;
    for word in all.by_ref() {
        if word == "--" {
            init_words = true;
            break;
        }
        let key = key(word);
        if OWNED_KEYS.contains(&key) {
            continue;
        }
        has_panic |= key == "panic";
        if let Some([tty, options]) = serial_console(word, &args.serial) {
            writer.word("console=");
            writer.push(tty);
            writer.push(options);
            continue;
        }
        writer.word(word);
    }
    writer.word("root=PARTUUID=");
    writer.push(args.root_partuuid);
    writer.push(" zboot.slot=");
    writer.push(args.slot.name());
    let _ = write!(writer, " zboot.attempt={}", args.attempt);
    if let (Some(seconds), false) = (args.panic_seconds, has_panic) {
        let _ = write!(writer, " panic={seconds}");
    }
    if init_words {
        writer.word("--");
        for word in all {
            writer.word(word);
        }
    }
    writer.finish()
}

/// The command line of a stock layout (docs/bring-your-own-image.md): `cmdline.txt` as the
/// firmware would pass it, its `root=` kept, only `console=serial0`/`serial1` translated,
/// after the firmware's own parameters (`firmware`, as in [`build`]).
pub fn build_stock<'o>(
    cmdline_txt: &[u8],
    serial: &[Option<&str>; 2],
    firmware: Option<&str>,
    out: &'o mut [u8],
) -> Result<&'o str, CmdlineError> {
    let line = check_line(cmdline_txt)?;
    let max = out.len().min(MAX_LENGTH);
    let mut writer = Writer {
        out,
        length: 0,
        max,
    };
    firmware_words(&mut writer, firmware, line);
    let mut init_words = false;
    for word in words(line) {
        init_words |= word == "--";
        match serial_console(word, serial) {
            Some([tty, options]) if !init_words => {
                writer.word("console=");
                writer.push(tty);
                writer.push(options);
            }
            _ => writer.word(word),
        }
    }
    writer.finish()
}

/// Builds the line into a fixed-capacity string (for callers that keep it).
pub fn build_string(
    cmdline_txt: &[u8],
    args: &BootArgs<'_>,
) -> Result<heapless::String<COMMAND_LINE_SIZE>, CmdlineError> {
    let mut buffer = [0u8; MAX_LENGTH];
    let line = build(cmdline_txt, args, &mut buffer)?;
    let mut out = heapless::String::new();
    out.push_str(line).map_err(|_| CmdlineError::TooLong {
        length: line.len(),
        max: MAX_LENGTH,
    })?;
    Ok(out)
}

/// Copies into the buffer while it fits and counts the full length either way, so that
/// [`CmdlineError::TooLong`] can say how long the line would have been.
struct Writer<'o> {
    out: &'o mut [u8],
    length: usize,
    max: usize,
}

impl<'o> Writer<'o> {
    /// The line written, or how long it would have been.
    fn finish(self) -> Result<&'o str, CmdlineError> {
        let Writer { out, length, max } = self;
        if length > max {
            return Err(CmdlineError::TooLong { length, max });
        }
        let bytes = out
            .get(..length)
            .ok_or(CmdlineError::TooLong { length, max })?;
        // Only whole `&str`s were copied in, so the prefix is UTF-8; the error arm is
        // unreachable.
        core::str::from_utf8(bytes).map_err(|e| CmdlineError::InvalidUtf8 {
            offset: e.valid_up_to(),
        })
    }

    /// Appends a word, with a separating space unless it is the first.
    fn word(&mut self, word: &str) {
        if self.length > 0 {
            self.push(" ");
        }
        self.push(word);
    }

    fn push(&mut self, text: &str) {
        let end = self.length.saturating_add(text.len());
        if end <= self.max
            && let Some(dst) = self.out.get_mut(self.length..end)
        {
            dst.copy_from_slice(text.as_bytes());
        }
        self.length = end;
    }
}

impl Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    fn args(panic_seconds: Option<u32>) -> BootArgs<'static> {
        BootArgs {
            root_partuuid: "1a2b3c4d-02",
            slot: Slot::A,
            attempt: 2,
            panic_seconds,
            serial: [Some("ttyS0"), Some("ttyAMA0")],
            firmware: None,
        }
    }

    /// What the Pi firmware passes (its parameters, then the top-level cmdline.txt it
    /// read, console already translated), as /proc/cmdline shows on Raspberry Pi OS.
    const FIRMWARE: &str = "coherent_pool=1M 8250.nr_uarts=1 snd_bcm2835.enable_headphones=0 \
        snd_bcm2835.enable_hdmi=1 vc_mem.mem_base=0x3ec00000 vc_mem.mem_size=0x40000000 \
        initrd=0x2e000000,0x1000 console=ttyS0,115200 console=tty1 \
        root=PARTUUID=4a3e915f-02 rootfstype=ext4 fsck.repair=yes rootwait zboot.test=x";

    #[test]
    fn the_firmware_parameters_come_first_without_root_initrd_and_what_the_slot_sets() {
        let mut out = [0u8; 1024];
        let line = build(
            b"console=serial0,115200 rootwait quiet\n",
            &BootArgs {
                firmware: Some(FIRMWARE),
                ..args(None)
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(
            line,
            "coherent_pool=1M 8250.nr_uarts=1 snd_bcm2835.enable_headphones=0 \
             snd_bcm2835.enable_hdmi=1 vc_mem.mem_base=0x3ec00000 vc_mem.mem_size=0x40000000 \
             rootfstype=ext4 fsck.repair=yes console=ttyS0,115200 rootwait quiet \
             root=PARTUUID=1a2b3c4d-02 zboot.slot=A zboot.attempt=2"
        );
        // The stock line: the same rule, the stock line's root kept.
        let line = build_stock(
            b"console=serial0,115200 console=tty1 root=PARTUUID=4a3e915f-02 rootfstype=ext4 \
              fsck.repair=yes rootwait",
            &[Some("ttyS0"), None],
            Some(FIRMWARE),
            &mut out,
        )
        .unwrap();
        assert!(
            line.starts_with("coherent_pool=1M 8250.nr_uarts=1 "),
            "{line}"
        );
        assert_eq!(line.matches("root=").count(), 1, "{line}");
        assert_eq!(line.matches("console=").count(), 2, "{line}");
        assert!(
            !line.contains("initrd=") && !line.contains("zboot.test"),
            "{line}"
        );
        // Words after the firmware's `--` are its init's: not passed on. A firmware line
        // with an unclosed quote is left out whole.
        for (firmware, expected) in [
            ("8250.nr_uarts=1 -- single", "8250.nr_uarts=1 quiet"),
            ("a=\"b 8250.nr_uarts=1", "quiet"),
        ] {
            let line = build_stock(b"quiet", &[None, None], Some(firmware), &mut out).unwrap();
            assert_eq!(line, expected);
        }
    }

    #[test]
    fn a_stock_line_keeps_its_root_and_translates_its_console() {
        let mut out = [0u8; 256];
        let line = build_stock(
            b"console=serial0,115200 console=tty1 root=PARTUUID=4a3e915f-02 rootwait -- console=serial0\n",
            &[Some("ttyS0"), Some("ttyAMA0")],
            None,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            line,
            "console=ttyS0,115200 console=tty1 root=PARTUUID=4a3e915f-02 rootwait -- console=serial0"
        );
        assert_eq!(
            build_stock(b"a\x01", &[None, None], None, &mut out),
            Err(CmdlineError::ControlCharacter { offset: 1, byte: 1 })
        );
    }

    #[test]
    fn uart_names() {
        assert_eq!(bcm2711_uart_tty("arm,pl011", "7e201000"), Some("ttyAMA0"));
        assert_eq!(
            bcm2711_uart_tty("brcm,bcm2835-aux-uart", "7e215040"),
            Some("ttyS0")
        );
        assert_eq!(bcm2711_uart_tty("arm,pl011", "7e201400"), None);
    }

    #[test]
    fn serial_consoles_are_translated_as_the_firmware_does() {
        let line = run(
            "console=serial0,115200 console=tty1 console=serial1 console=serial2 \
             console=serial0x kgdboc=serial0",
            None,
        )
        .unwrap();
        assert!(
            line.starts_with(
                "console=ttyS0,115200 console=tty1 console=ttyAMA0 console=serial2 \
                 console=serial0x kgdboc=serial0 root="
            ),
            "{line}"
        );
        let unknown = BootArgs {
            serial: [None, Some("ttyAMA0")],
            ..args(None)
        };
        let mut out = [0u8; 256];
        let line = build(b"console=serial0,115200", &unknown, &mut out).unwrap();
        assert!(line.starts_with("console=serial0,115200 root="), "{line}");
    }

    fn run(input: &str, panic: Option<u32>) -> Result<std::string::String, CmdlineError> {
        let mut out = [0u8; 4096];
        build(input.as_bytes(), &args(panic), &mut out).map(ToString::to_string)
    }

    #[test]
    fn replaces_owned_words_and_appends() {
        assert_eq!(
            run(
                "console=ttyAMA0,115200 root=/dev/mmcblk0p2  rootwait zboot.slot=B\r\n",
                None
            )
            .unwrap(),
            "console=ttyAMA0,115200 rootwait root=PARTUUID=1a2b3c4d-02 zboot.slot=A zboot.attempt=2"
        );
        assert_eq!(
            run("", Some(10)).unwrap(),
            "root=PARTUUID=1a2b3c4d-02 zboot.slot=A zboot.attempt=2 panic=10"
        );
        assert_eq!(
            run("quiet panic=5\n", Some(10)).unwrap(),
            "quiet panic=5 root=PARTUUID=1a2b3c4d-02 zboot.slot=A zboot.attempt=2"
        );
        // Not ours: `rootfstype=`, `zboot.slotx=`, a quoted value that mentions root=.
        assert_eq!(
            run(
                "rootfstype=ext4 zboot.slotx=1 dyndbg=\"file root=x +p\" \"root=a b\" zboot.attempt",
                None
            )
            .unwrap(),
            "rootfstype=ext4 zboot.slotx=1 dyndbg=\"file root=x +p\" root=PARTUUID=1a2b3c4d-02 zboot.slot=A zboot.attempt=2"
        );
    }

    #[test]
    fn init_arguments_stay_after_the_separator() {
        assert_eq!(
            run("quiet -- root=init-arg single", Some(3)).unwrap(),
            "quiet root=PARTUUID=1a2b3c4d-02 zboot.slot=A zboot.attempt=2 panic=3 -- root=init-arg single"
        );
    }

    #[test]
    fn bad_input_names_the_offset() {
        assert_eq!(
            run("quiet\0x", None),
            Err(CmdlineError::ControlCharacter { offset: 5, byte: 0 })
        );
        assert_eq!(
            run("a\nb\n", None),
            Err(CmdlineError::ControlCharacter {
                offset: 1,
                byte: b'\n'
            })
        );
        let mut out = [0u8; 64];
        assert_eq!(
            build(b"ab\xffc", &args(None), &mut out),
            Err(CmdlineError::InvalidUtf8 { offset: 2 })
        );
        assert_eq!(
            run("a x=\"open", None),
            Err(CmdlineError::UnbalancedQuote { offset: 4 })
        );
        let bad = BootArgs {
            root_partuuid: "12 root=x",
            ..args(None)
        };
        assert_eq!(build(b"", &bad, &mut out), Err(CmdlineError::BadPartUuid));
        assert_eq!(
            CmdlineError::ControlCharacter { offset: 3, byte: 0 }.to_string(),
            "cmdline.txt: control character 0x00 at byte 3 (the file must be one line)"
        );
    }

    #[test]
    fn too_long_is_an_error_not_a_truncation() {
        let long = "x".repeat(2000);
        assert_eq!(
            run(&long, None),
            Err(CmdlineError::TooLong {
                length: 2000 + 1 + 25 + 1 + 12 + 1 + 15,
                max: MAX_LENGTH
            })
        );
        let mut small = [0u8; 40];
        assert!(matches!(
            build(b"quiet", &args(None), &mut small),
            Err(CmdlineError::TooLong { max: 40, .. })
        ));
        let fits = "x".repeat(MAX_LENGTH - 55);
        let line = build_string(fits.as_bytes(), &args(None)).unwrap();
        assert_eq!(line.len(), MAX_LENGTH);
    }

    #[test]
    fn words_split_like_linux() {
        let split: std::vec::Vec<&str> = words(" a\tb=\"c d\"  \"e f\" g").collect();
        assert_eq!(split, ["a", "b=\"c d\"", "\"e f\"", "g"]);
        assert_eq!(key("\"root=a b\""), "root");
        assert_eq!(key("quiet"), "quiet");
    }
}
