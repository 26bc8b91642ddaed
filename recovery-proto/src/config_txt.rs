//! The Raspberry Pi firmware's `config.txt`, read as the firmware reads it.
//!
//! zboot needs this twice: `zbctl image convert` finds a stock image's kernel, initramfs and
//! command line through it (and edits it), and the loader boots a stock layout as the
//! firmware would have. Both go through [`Reader`], which walks one file's lines and tells
//! for each whether the firmware would apply it on the board, and [`BootFiles`], which
//! collects the settings that name the OS files.
//!
//! The rules, from the Raspberry Pi documentation (`config_txt/what_is_config_txt.adoc`,
//! `conditional.adoc`, `boot.adoc`):
//!
//! - one `property=value` per line, no spaces around `=`; a line starting with `#` is a
//!   comment; characters past the 98th of a line are ignored;
//! - `initramfs FILE[,FILE...] ADDRESS` is the one setting written with a space;
//! - `include FILE` inserts that file's lines where it stands (the filters carry into and
//!   out of it);
//! - `[...]` lines are conditional filters. `[all]` resets every filter; `[none]` applies
//!   nothing until the next `[all]`. Filters of the same type replace each other (model:
//!   `[pi4]`, `[cm4]`, `[board-type=0x14]` ...; serial `[0x12345678]`; `[EDID=...]`;
//!   `[gpioN=V]`; `[tryboot]`) and filters of different types combine. A CM4 sees `[pi4]`
//!   and `[cm4]` sections. `[HDMI:n]` selects a port for HDMI settings and filters nothing.
//!   Filters whose answer is only known on the running board (EDID, GPIO) count as not
//!   matching: zboot cannot read a monitor's EDID, and a setting that depends on a pin is
//!   not one zboot should guess.
//! - a later setting replaces an earlier one.
//!
//! No allocation: values are at most 98 bytes and held in fixed strings.

use heapless::String;

/// The firmware ignores characters past this column.
pub const LINE_LIMIT: usize = 98;

/// A value from `config.txt` (at most a line).
pub type Value = String<LINE_LIMIT>;

/// What the filters are evaluated against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Board {
    /// Model filter names this board sees, lower case (`pi4`, `cm4`).
    pub models: &'static [&'static str],
    /// The revision code's board type (`[board-type=0x14]` is CM4).
    pub board_type: u32,
    /// The serial number's low 32 bits, when known (`[0x12345678]`).
    pub serial: Option<u32>,
    /// The tryboot flag.
    pub tryboot: bool,
}

/// A Compute Module 4 (`conditional.adoc`: `[cm4]` also sees `[pi4]`; board type 0x14).
pub const CM4: Board = Board {
    models: &["pi4", "cm4"],
    board_type: 0x14,
    serial: None,
    tryboot: false,
};

/// The filter state, carried from line to line and across `include`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    model: Option<bool>,
    serial: Option<bool>,
    edid: Option<bool>,
    gpio: Option<bool>,
    tryboot: Option<bool>,
    none: bool,
}

impl Filters {
    /// Whether settings under the current filters apply.
    #[must_use]
    pub fn active(&self) -> bool {
        !self.none
            && [self.model, self.serial, self.edid, self.gpio, self.tryboot]
                .iter()
                .all(|f| f.unwrap_or(true))
    }

    /// Applies a `[...]` line's filter (the text between the brackets).
    pub fn apply(&mut self, board: &Board, filter: &str) {
        let lower = |s: &str| {
            let mut out: String<LINE_LIMIT> = String::new();
            for c in s.chars() {
                let _ = out.push(c.to_ascii_lowercase());
            }
            out
        };
        let name = lower(filter.trim());
        let name = name.as_str();
        if name == "all" {
            *self = Self::default();
        } else if name == "none" {
            self.none = true;
        } else if name == "tryboot" {
            self.tryboot = Some(board.tryboot);
        } else if name.starts_with("hdmi:") {
            // A port selector, not a condition.
        } else if let Some(kind) = name.strip_prefix("board-type=") {
            self.model = Some(parse_number(kind) == Some(board.board_type));
        } else if name.starts_with("edid=") {
            self.edid = Some(false);
        } else if name.starts_with("gpio") {
            self.gpio = Some(false);
        } else if let Some(hex) = name.strip_prefix("0x") {
            let serial = u32::from_str_radix(hex, 16).ok();
            self.serial = Some(serial.is_some() && serial == board.serial);
        } else {
            // A model filter (known or not: an unknown model is not this board).
            self.model = Some(board.models.contains(&name));
        }
    }
}

fn parse_number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// What a line holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// Empty, blanks only, or a `#` comment.
    Blank,
    /// `[filter]`: the text between the brackets.
    Section(&'a str),
    /// `include FILE`.
    Include(&'a str),
    /// `initramfs FILES ADDRESS` (`ADDRESS` may be empty).
    Initramfs {
        /// One name or a comma-separated list.
        files: &'a str,
        /// `followkernel`, `0` or an address.
        address: &'a str,
    },
    /// `key=value` (a `key:index=value` keeps its index in `key`).
    Setting {
        /// The property name as written.
        key: &'a str,
        /// Everything after the first `=`.
        value: &'a str,
    },
    /// Anything else: the firmware ignores it.
    Unknown,
}

/// One line of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// 1-based line number.
    pub number: usize,
    /// The whole line as stored, without its line break.
    pub raw: &'a str,
    /// What it holds (read from the first [`LINE_LIMIT`] characters).
    pub entry: Entry<'a>,
    /// Whether the filters in force let the firmware apply it on the board. Section lines
    /// report the state after their own filter.
    pub active: bool,
}

/// Parses one line (without its line break).
#[must_use]
pub fn parse_line(raw: &str) -> Entry<'_> {
    let cut = raw
        .char_indices()
        .nth(LINE_LIMIT)
        .map_or(raw, |(at, _)| raw.get(..at).unwrap_or(raw));
    let text = cut.trim();
    if text.is_empty() || text.starts_with('#') {
        return Entry::Blank;
    }
    if let Some(inner) = text.strip_prefix('[') {
        return match inner.find(']') {
            Some(end) => Entry::Section(inner.get(..end).unwrap_or("")),
            None => Entry::Unknown,
        };
    }
    if let Some(rest) = text.strip_prefix("include")
        && rest.starts_with([' ', '\t'])
    {
        return Entry::Include(rest.trim());
    }
    if let Some(rest) = text.strip_prefix("initramfs")
        && rest.starts_with([' ', '\t'])
    {
        let mut words = rest.split_whitespace();
        let files = words.next().unwrap_or("");
        let address = words.next().unwrap_or("");
        return Entry::Initramfs { files, address };
    }
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains([' ', '\t']) => {
            Entry::Setting { key, value }
        }
        _ => Entry::Unknown,
    }
}

/// Walks one file's lines, updating the shared [`Filters`].
#[derive(Debug)]
pub struct Reader<'a, 'f> {
    rest: &'a str,
    number: usize,
    board: &'f Board,
    filters: &'f mut Filters,
}

impl<'a, 'f> Reader<'a, 'f> {
    /// A reader over `text` (a file's contents; invalid UTF-8 must be refused by the
    /// caller) starting from `filters`.
    pub fn new(text: &'a str, board: &'f Board, filters: &'f mut Filters) -> Self {
        Self {
            rest: text,
            number: 0,
            board,
            filters,
        }
    }
}

impl<'a> Iterator for Reader<'a, '_> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let (raw, rest) = match self.rest.find('\n') {
            Some(at) => (
                self.rest.get(..at).unwrap_or(""),
                self.rest.get(at + 1..).unwrap_or(""),
            ),
            None => (self.rest, ""),
        };
        self.rest = rest;
        self.number += 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let entry = parse_line(raw);
        if let Entry::Section(filter) = entry {
            self.filters.apply(self.board, filter);
        }
        Some(Line {
            number: self.number,
            raw,
            entry,
            active: self.filters.active(),
        })
    }
}

/// The settings that name the files the firmware loads for the OS, as they stand after the
/// lines fed to [`BootFiles::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
// One field per config.txt flag the firmware reads; not a state machine.
#[allow(clippy::struct_excessive_bools)]
pub struct BootFiles {
    /// `kernel=`.
    pub kernel: Option<Value>,
    /// `arm_64bit=` non-zero.
    pub arm_64bit: bool,
    /// `initramfs FILES ...` (or `ramfsfile=`): the names as written, comma-separated.
    pub initramfs: Option<Value>,
    /// `auto_initramfs=1`.
    pub auto_initramfs: bool,
    /// `os_prefix=`.
    pub os_prefix: Value,
    /// `cmdline=`.
    pub cmdline: Option<Value>,
    /// `device_tree=`.
    pub device_tree: Option<Value>,
    /// `otg_mode=` non-zero.
    pub otg_mode: bool,
    /// `upstream_kernel=1`.
    pub upstream_kernel: bool,
    /// `enable_uart=1`.
    pub enable_uart: bool,
}

/// The setting keys that [`BootFiles`] follows (besides `initramfs` and `include`).
pub const BOOT_FILE_KEYS: [&str; 10] = [
    "kernel",
    "arm_64bit",
    "ramfsfile",
    "auto_initramfs",
    "os_prefix",
    "cmdline",
    "device_tree",
    "otg_mode",
    "upstream_kernel",
    "enable_uart",
];

fn value(text: &str) -> Value {
    let mut out = Value::new();
    for c in text.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

fn flag(text: &str) -> bool {
    parse_number(text.trim()).is_some_and(|n| n != 0)
}

impl BootFiles {
    /// Takes one line into account (inactive lines change nothing).
    pub fn apply(&mut self, line: &Line<'_>) {
        if !line.active {
            return;
        }
        match line.entry {
            Entry::Initramfs { files, .. } => self.initramfs = Some(value(files)),
            Entry::Setting { key, value: v } => match key {
                "kernel" => self.kernel = Some(value(v)),
                "arm_64bit" => self.arm_64bit = flag(v),
                "ramfsfile" => self.initramfs = Some(value(v)),
                "auto_initramfs" => self.auto_initramfs = flag(v),
                "os_prefix" => self.os_prefix = value(v),
                "cmdline" => self.cmdline = Some(value(v)),
                "device_tree" => self.device_tree = Some(value(v)),
                "otg_mode" => self.otg_mode = flag(v),
                "upstream_kernel" => self.upstream_kernel = flag(v),
                "enable_uart" => self.enable_uart = flag(v),
                _ => {}
            },
            _ => {}
        }
    }

    /// The kernel's name before the prefix: `kernel=`, else `kernel8.img` with
    /// `arm_64bit`, else the Pi 4 default `kernel7l.img` (`boot.adoc`: `kernel`,
    /// `arm_64bit`).
    #[must_use]
    pub fn kernel_name(&self) -> Value {
        match &self.kernel {
            Some(name) => name.clone(),
            None if self.arm_64bit => value("kernel8.img"),
            None => value("kernel7l.img"),
        }
    }

    /// The initramfs names before the prefix: the explicit ones, else with
    /// `auto_initramfs` the one named like the kernel (`kernel8.img` → `initramfs8`,
    /// `kernel_2712.img` → `initramfs_2712`; a kernel not named `kernel*.img` has none).
    #[must_use]
    pub fn initramfs_names(&self) -> Option<Value> {
        if let Some(files) = &self.initramfs {
            return Some(files.clone());
        }
        if !self.auto_initramfs {
            return None;
        }
        let kernel = self.kernel_name();
        let base = kernel.rsplit('/').next().unwrap_or("");
        let middle = base.strip_prefix("kernel")?.strip_suffix(".img")?;
        let mut name = value("initramfs");
        name.push_str(middle).ok()?;
        Some(name)
    }

    /// The command-line file's name before the prefix (`cmdline.txt` by default).
    #[must_use]
    pub fn cmdline_name(&self) -> Value {
        self.cmdline.clone().unwrap_or_else(|| value("cmdline.txt"))
    }

    /// `name` as the firmware opens it: `os_prefix` in front unless the name starts with
    /// `/` (`boot.adoc`, `os_prefix`); the result never starts with `/`. `None` when the
    /// joined name does not fit a line.
    #[must_use]
    pub fn path(&self, name: &str) -> Option<Value> {
        if let Some(absolute) = name.strip_prefix('/') {
            return Some(value(absolute));
        }
        let mut path = self.os_prefix.clone();
        path.push_str(name).ok()?;
        Some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::vec::Vec;

    fn files(text: &str) -> BootFiles {
        let mut filters = Filters::default();
        let mut boot = BootFiles::default();
        for line in Reader::new(text, &CM4, &mut filters) {
            boot.apply(&line);
        }
        boot
    }

    #[test]
    fn raspberry_pi_os_bookworm_on_a_cm4() {
        // The shape Raspberry Pi OS writes (bookworm, arm64).
        let text = "# For more options and information see\n\
                    dtparam=audio=on\ncamera_auto_detect=1\ndisplay_auto_detect=1\n\
                    auto_initramfs=1\ndtoverlay=vc4-kms-v3d\nmax_framebuffers=2\n\
                    disable_fw_kms_setup=1\narm_64bit=1\ndisable_overscan=1\narm_boost=1\n\
                    \n[cm4]\notg_mode=1\n\n[cm5]\ndtoverlay=dwc2,dr_mode=host\n\n[all]\n";
        let boot = files(text);
        assert_eq!(boot.kernel_name().as_str(), "kernel8.img");
        assert_eq!(boot.initramfs_names().as_deref(), Some("initramfs8"));
        assert_eq!(boot.cmdline_name().as_str(), "cmdline.txt");
        assert!(boot.otg_mode, "[cm4] applies to a CM4");
    }

    #[test]
    fn filters_of_one_type_replace_each_other_and_types_combine() {
        let boot = files("[pi3]\nkernel=a.img\n[pi4]\ncmdline=b.txt\n[0x1234]\nkernel=c.img\n");
        assert_eq!(
            boot.kernel, None,
            "[pi3] is not a CM4; the serial is unknown"
        );
        assert_eq!(boot.cmdline.as_deref(), Some("b.txt"));
        let boot = files("[none]\nkernel=x.img\n[pi4]\nkernel=y.img\n[all]\narm_64bit=1\n");
        assert_eq!(boot.kernel, None, "[none] holds until [all]");
        assert!(boot.arm_64bit);
        let boot = files("[board-type=0x14]\nkernel=cm4.img\n[board-type=0x11]\nkernel=4b.img\n");
        assert_eq!(boot.kernel.as_deref(), Some("cm4.img"));
        let boot = files("[gpio4=1]\nkernel=g.img\n[all]\n[EDID=X-Y]\nkernel=e.img\n");
        assert_eq!(boot.kernel, None, "pin and monitor filters are not guessed");
        let boot = files("[HDMI:0]\nhdmi_group=2\nkernel=h.img\n");
        assert_eq!(boot.kernel.as_deref(), Some("h.img"));
    }

    #[test]
    fn initramfs_forms_and_prefixes() {
        let boot = files("initramfs initrd.gz followkernel\nos_prefix=next/\n");
        assert_eq!(boot.initramfs_names().as_deref(), Some("initrd.gz"));
        assert_eq!(boot.path("initrd.gz").as_deref(), Some("next/initrd.gz"));
        assert_eq!(boot.path("/zboot.img").as_deref(), Some("zboot.img"));
        let boot = files("kernel=kernel_2712.img\nauto_initramfs=1\n");
        assert_eq!(boot.initramfs_names().as_deref(), Some("initramfs_2712"));
        let boot = files("kernel=vmlinuz\nauto_initramfs=1\n");
        assert_eq!(boot.initramfs_names(), None);
        assert_eq!(files("").kernel_name().as_str(), "kernel7l.img");
    }

    #[test]
    fn lines_past_the_limit_and_odd_lines() {
        let long = format!("kernel={}\n", "k".repeat(120));
        let boot = files(&long);
        assert_eq!(
            boot.kernel.map(|k| k.len()),
            Some(LINE_LIMIT - "kernel=".len())
        );
        assert_eq!(parse_line("  # x=1"), Entry::Blank);
        assert_eq!(parse_line("foo bar=1"), Entry::Unknown);
        assert_eq!(parse_line("[pi4"), Entry::Unknown);
        assert_eq!(parse_line("include extra.txt"), Entry::Include("extra.txt"));
        assert_eq!(
            parse_line("kernel=a=b\r"),
            Entry::Setting {
                key: "kernel",
                value: "a=b"
            }
        );
        let mut filters = Filters::default();
        let numbers: Vec<_> = Reader::new("a=1\r\n\r\nb=2", &CM4, &mut filters)
            .map(|l| (l.number, l.raw))
            .collect();
        assert_eq!(numbers, [(1, "a=1"), (2, ""), (3, "b=2")]);
    }
}
