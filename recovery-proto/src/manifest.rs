//! `zbmanifest.txt`: `key=value` lines on the boot partition, parsed without allocation.
//!
//! Tolerated: `#` comment lines, blank lines, CRLF line ends, a UTF-8 byte-order mark,
//! whitespace around keys and values, values in double quotes, and unknown keys (collected as
//! [`Warning`]s with their line number, up to [`MAX_WARNINGS`]; the rest are counted).
//! A `#` inside a value is part of the value (URLs may hold one). Errors name the line.
//! A known key given twice is an error: which one wins would be a guess.

use core::fmt;

use crate::Slot;
use crate::partition::{TableKind, slot_root_on};

/// Warnings kept; further ones are only counted in [`Manifest::warnings_dropped`].
pub const MAX_WARNINGS: usize = 8;

/// The parsed manifest; fields borrow from the input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest<'a> {
    /// `new_update_needed`: user space should fetch an update.
    pub new_update_needed: Option<bool>,
    /// `root_dev`: the root device (e.g. `/dev/mmcblk0`).
    pub root_dev: Option<&'a str>,
    /// `root_a`: slot A's root (partition or PARTUUID).
    pub root_a: Option<&'a str>,
    /// `root_b`: slot B's root.
    pub root_b: Option<&'a str>,
    /// `update_endpoint`: where updates come from.
    pub update_endpoint: Option<&'a str>,
    /// `endpoint_type`: how to reach it (e.g. `HTTPS`, `LOCAL`).
    pub endpoint_type: Option<&'a str>,
    /// `update_name`: the update image's name.
    pub update_name: Option<&'a str>,
    /// `max_boot_failure` (1–15).
    pub max_boot_failure: Option<u8>,
    /// `safe_root` (alias `safe_slot`): the SAFE slot's root.
    pub safe_root: Option<&'a str>,
    /// `watchdog_timeout` in seconds (0 = hang guard off; at most 15, the PM watchdog's
    /// 20-bit counter of 16 µs ticks, per Linux `bcm2835_wdt.c`).
    pub watchdog_timeout: Option<u8>,
    /// `count_power_loss`: whether a boot ended by a power-on reset counts as failed.
    pub count_power_loss: Option<bool>,
    /// `recovery_image`: file name of the `.zi` image on the recovery stick.
    pub recovery_image: Option<&'a str>,
    /// `public_key`: ed25519 public key (64 hex digits or base64), for image signatures.
    pub public_key: Option<[u8; 32]>,
    /// `ca_cert`: path (on the running system) of a PEM bundle of the CA certificates an
    /// HTTPS `update_endpoint` is verified against, instead of the system's store.
    pub ca_cert: Option<&'a str>,
    /// `allow_http`: accept a plain `http://` `update_endpoint` (off by default).
    pub allow_http: Option<bool>,
    /// `adopt`: on a stock Raspberry Pi layout, reflash into the zboot layout from a USB
    /// stick (`zbctl adopt` sets it; docs/bring-your-own-image.md).
    pub adopt: Option<bool>,
    /// `adopt_wait`: seconds the adoption waits for a stick before the stock system boots
    /// (0–86400; default [`DEFAULT_ADOPT_WAIT`]).
    pub adopt_wait: Option<u32>,
    /// `diag`: print the bring-up diagnostics at every boot (docs/bring-up.md).
    pub diag: Option<bool>,
    /// `report_url`: where `zbctl` posts its update reports (docs/update.md, "Update
    /// reports"). The loader ignores it; `zbctl` accepts only an `https://` URL and names
    /// [`Manifest::report_url_line`] when refusing another.
    pub report_url: Option<&'a str>,
    /// The line `report_url` is on (0 when it is not set).
    pub report_url_line: u32,
    /// Unknown keys.
    pub warnings: heapless::Vec<Warning<'a>, MAX_WARNINGS>,
    /// Warnings that did not fit.
    pub warnings_dropped: u32,
}

/// Something tolerated but worth telling the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Warning<'a> {
    /// 1-based line number.
    pub line: u32,
    /// The unknown key.
    pub unknown_key: &'a str,
}

impl fmt::Display for Warning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "zbmanifest.txt line {}: unknown key '{}' ignored",
            self.line, self.unknown_key
        )
    }
}

/// A line that cannot be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based line number.
    pub line: u32,
    /// What is wrong.
    pub kind: ManifestErrorKind,
}

/// What is wrong with a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestErrorKind {
    /// Not valid UTF-8.
    InvalidUtf8,
    /// No `=` on a non-comment line.
    MissingEquals,
    /// Nothing before the `=`.
    EmptyKey,
    /// A known key with an empty value.
    EmptyValue { key: &'static str },
    /// Not one of yes/no/true/false/on/off/1/0.
    BadBool { key: &'static str },
    /// Not a decimal number.
    BadNumber { key: &'static str },
    /// A number outside `min..=max`.
    OutOfRange {
        key: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    /// Not 32 bytes in hex or base64.
    BadPublicKey { length: usize },
    /// The key was already given on `first_line`.
    Duplicate { key: &'static str, first_line: u32 },
}

impl core::error::Error for ManifestError {}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zbmanifest.txt line {}: ", self.line)?;
        match self.kind {
            ManifestErrorKind::InvalidUtf8 => f.write_str("not valid UTF-8"),
            ManifestErrorKind::MissingEquals => f.write_str("expected key=value"),
            ManifestErrorKind::EmptyKey => f.write_str("empty key before '='"),
            ManifestErrorKind::EmptyValue { key } => write!(f, "{key}: empty value"),
            ManifestErrorKind::BadBool { key } => {
                write!(f, "{key}: expected yes/no, true/false, on/off or 1/0")
            }
            ManifestErrorKind::BadNumber { key } => write!(f, "{key}: expected a decimal number"),
            ManifestErrorKind::OutOfRange {
                key,
                value,
                min,
                max,
            } => {
                write!(f, "{key}: {value} is outside {min}..={max}")
            }
            ManifestErrorKind::BadPublicKey { length } => write!(
                f,
                "public_key: {length} characters is neither 64 hex digits nor base64 of 32 bytes"
            ),
            ManifestErrorKind::Duplicate { key, first_line } => {
                write!(f, "{key} given again (first on line {first_line})")
            }
        }
    }
}

/// Known keys, in the order of `seen` bookkeeping.
const KEYS: [&str; 20] = [
    "new_update_needed",
    "root_dev",
    "root_a",
    "root_b",
    "update_endpoint",
    "endpoint_type",
    "update_name",
    "max_boot_failure",
    "safe_root",
    "watchdog_timeout",
    "count_power_loss",
    "recovery_image",
    "public_key",
    "safe_slot",
    "ca_cert",
    "allow_http",
    "adopt",
    "adopt_wait",
    "diag",
    "report_url",
];

/// `adopt_wait` when the manifest does not say: ten minutes, time enough to fetch a stick,
/// short enough that a unit in the field is not down for long without one.
pub const DEFAULT_ADOPT_WAIT: u32 = 600;

/// The settings a loader with a built-in key (`ZBOOT_PUBLIC_KEY`) takes only from its own
/// build (`ZBOOT_SETTINGS`, or the defaults), never from `zbmanifest.txt`: each would let
/// whoever can write the boot partition weaken a verified boot (docs/security.md).
/// - `root_a`, `root_b`, `safe_root`: a signed kernel pointed at another root file system;
/// - `watchdog_timeout`: the hang guard turned off (0) or stretched;
/// - `recovery_image`: recovery pointed at another file name.
///
/// `public_key` is guarded too, where it is used: the built-in key wins (`recovery`).
pub const GUARDED_KEYS: [&str; 5] = [
    "root_a",
    "root_b",
    "safe_root",
    "watchdog_timeout",
    "recovery_image",
];

impl<'a> Manifest<'a> {
    /// Replaces the [`GUARDED_KEYS`] with `trusted`'s values (the build's); returns the keys
    /// this manifest set to something that means otherwise, now ignored. Roots are compared
    /// by the partition they name on a `table` disk, so `root_a=/dev/mmcblk0p2` (what
    /// `zbctl disk create` writes) is no change from the default.
    pub fn guard(
        &mut self,
        trusted: &Manifest<'a>,
        table: TableKind,
    ) -> heapless::Vec<&'static str, 5> {
        let mut ignored = heapless::Vec::new();
        let mut note = |key: &'static str, differs: bool, set: bool| {
            if differs && set {
                let _ = ignored.push(key);
            }
        };
        let root = |slot, value| slot_root_on(table, slot, value).ok();
        for (key, slot, mine, theirs) in [
            ("root_a", Slot::A, self.root_a, trusted.root_a),
            ("root_b", Slot::B, self.root_b, trusted.root_b),
            ("safe_root", Slot::Safe, self.safe_root, trusted.safe_root),
        ] {
            note(key, root(slot, mine) != root(slot, theirs), mine.is_some());
        }
        note(
            "watchdog_timeout",
            self.watchdog_timeout != trusted.watchdog_timeout,
            self.watchdog_timeout.is_some(),
        );
        note(
            "recovery_image",
            self.recovery_image != trusted.recovery_image,
            self.recovery_image.is_some(),
        );
        self.root_a = trusted.root_a;
        self.root_b = trusted.root_b;
        self.safe_root = trusted.safe_root;
        self.watchdog_timeout = trusted.watchdog_timeout;
        self.recovery_image = trusted.recovery_image;
        ignored
    }

    /// Parses the file's bytes.
    pub fn parse(input: &'a [u8]) -> Result<Self, ManifestError> {
        let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
        let mut manifest = Manifest::default();
        let mut seen = [0u32; KEYS.len()];
        for (index, raw) in input.split(|&b| b == b'\n').enumerate() {
            let line = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let error = |kind| ManifestError { line, kind };
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let text =
                core::str::from_utf8(raw).map_err(|_| error(ManifestErrorKind::InvalidUtf8))?;
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let (key, value) = text
                .split_once('=')
                .ok_or(error(ManifestErrorKind::MissingEquals))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(error(ManifestErrorKind::EmptyKey));
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            let Some(position) = KEYS
                .iter()
                .position(|known| known.eq_ignore_ascii_case(key))
            else {
                if manifest
                    .warnings
                    .push(Warning {
                        line,
                        unknown_key: key,
                    })
                    .is_err()
                {
                    manifest.warnings_dropped += 1;
                }
                continue;
            };
            // `safe_slot` is an alias of `safe_root`: they share one entry.
            let canonical = if position == 13 { 8 } else { position };
            let name = KEYS.get(canonical).copied().unwrap_or("");
            if let Some(first) = seen.get_mut(canonical) {
                if *first != 0 {
                    return Err(error(ManifestErrorKind::Duplicate {
                        key: name,
                        first_line: *first,
                    }));
                }
                *first = line;
            }
            if value.is_empty() {
                return Err(error(ManifestErrorKind::EmptyValue { key: name }));
            }
            manifest.set(canonical, name, value).map_err(error)?;
            if name == "report_url" {
                manifest.report_url_line = line;
            }
        }
        Ok(manifest)
    }

    fn set(
        &mut self,
        key: usize,
        name: &'static str,
        value: &'a str,
    ) -> Result<(), ManifestErrorKind> {
        match key {
            0 => self.new_update_needed = Some(parse_bool(name, value)?),
            1 => self.root_dev = Some(value),
            2 => self.root_a = Some(value),
            3 => self.root_b = Some(value),
            4 => self.update_endpoint = Some(value),
            5 => self.endpoint_type = Some(value),
            6 => self.update_name = Some(value),
            7 => self.max_boot_failure = Some(parse_number(name, value, 1, 15)? as u8),
            8 => self.safe_root = Some(value),
            9 => self.watchdog_timeout = Some(parse_number(name, value, 0, 15)? as u8),
            10 => self.count_power_loss = Some(parse_bool(name, value)?),
            11 => self.recovery_image = Some(value),
            12 => self.public_key = Some(parse_key(value)?),
            14 => self.ca_cert = Some(value),
            15 => self.allow_http = Some(parse_bool(name, value)?),
            16 => self.adopt = Some(parse_bool(name, value)?),
            17 => self.adopt_wait = Some(parse_number(name, value, 0, 86_400)? as u32),
            19 => self.report_url = Some(value),
            _ => self.diag = Some(parse_bool(name, value)?),
        }
        Ok(())
    }
}

fn parse_bool(key: &'static str, value: &str) -> Result<bool, ManifestErrorKind> {
    const TRUE: [&str; 4] = ["yes", "true", "on", "1"];
    const FALSE: [&str; 4] = ["no", "false", "off", "0"];
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(value)) {
        Ok(true)
    } else if FALSE.iter().any(|f| f.eq_ignore_ascii_case(value)) {
        Ok(false)
    } else {
        Err(ManifestErrorKind::BadBool { key })
    }
}

fn parse_number(
    key: &'static str,
    value: &str,
    min: u64,
    max: u64,
) -> Result<u64, ManifestErrorKind> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ManifestErrorKind::BadNumber { key });
    }
    let number: u64 = value.parse().map_err(|_| ManifestErrorKind::OutOfRange {
        key,
        value: u64::MAX,
        min,
        max,
    })?;
    if (min..=max).contains(&number) {
        Ok(number)
    } else {
        Err(ManifestErrorKind::OutOfRange {
            key,
            value: number,
            min,
            max,
        })
    }
}

fn parse_key(value: &str) -> Result<[u8; 32], ManifestErrorKind> {
    let bad = ManifestErrorKind::BadPublicKey {
        length: value.len(),
    };
    let mut out = [0u8; 32];
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (byte, pair) in out.iter_mut().zip(value.as_bytes().chunks_exact(2)) {
            let text = core::str::from_utf8(pair).map_err(|_| bad)?;
            *byte = u8::from_str_radix(text, 16).map_err(|_| bad)?;
        }
        return Ok(out);
    }
    // Base64 (RFC 4648 standard alphabet), 32 bytes = 43 characters plus one '='.
    let digits = value.strip_suffix('=').unwrap_or(value);
    if digits.len() != 43 {
        return Err(bad);
    }
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut written = 0;
    for c in digits.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(bad),
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            if let Some(byte) = out.get_mut(written) {
                *byte = (bits >> count) as u8;
            }
            written += 1;
            bits &= (1 << count) - 1;
        }
    }
    // 43 × 6 = 258 bits: 32 bytes and 2 leftover bits, which must be zero (canonical).
    if written != 32 || bits != 0 {
        return Err(bad);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_settings_come_from_the_build_only() {
        let on_disk = b"root_a=/dev/mmcblk0p6\nwatchdog_timeout=0\nrecovery_image=other.zi\n\
            max_boot_failure=5\nroot_b=/dev/mmcblk0p3\nsafe_root=/dev/mmcblk0p5\n";
        let mut manifest = Manifest::parse(on_disk).unwrap();
        let trusted = Manifest::parse(b"watchdog_timeout=10\nroot_b=/dev/mmcblk0p3\n").unwrap();
        // safe_root names the default SAFE root of an MBR disk: no change, no warning.
        let ignored = manifest.guard(&trusted, TableKind::Mbr);
        assert_eq!(
            ignored.as_slice(),
            ["root_a", "watchdog_timeout", "recovery_image"]
        );
        assert_eq!(manifest.root_a, None, "the default");
        assert_eq!(
            manifest.root_b,
            Some("/dev/mmcblk0p3"),
            "the same as the build's"
        );
        assert_eq!(manifest.watchdog_timeout, Some(10), "the build's");
        assert_eq!(manifest.recovery_image, None);
        assert_eq!(manifest.max_boot_failure, Some(5), "not guarded");
        // Every guarded key is a key of the format.
        for key in GUARDED_KEYS {
            assert!(KEYS.contains(&key), "{key}");
        }
    }
    use std::string::ToString;

    #[test]
    fn adoption_keys() {
        let manifest = Manifest::parse(b"diag=yes\n").unwrap();
        assert_eq!(manifest.diag, Some(true));
        assert!(Manifest::parse(b"diag=maybe\n").is_err());
        let manifest = Manifest::parse(b"adopt=yes\nadopt_wait=30\n").unwrap();
        assert_eq!(
            (manifest.adopt, manifest.adopt_wait),
            (Some(true), Some(30))
        );
        assert_eq!(
            Manifest::parse(b"adopt_wait=86401").map(|_| ()),
            Err(ManifestError {
                line: 1,
                kind: ManifestErrorKind::OutOfRange {
                    key: "adopt_wait",
                    value: 86_401,
                    min: 0,
                    max: 86_400
                }
            })
        );
    }

    #[test]
    fn parses_all_keys_tolerantly() {
        let text = b"\xEF\xBB\xBF# zboot manifest\r\n\
            new_update_needed = yes\r\n\
            \r\n\
              root_dev=/dev/mmcblk0  \n\
            root_a=PARTUUID=1234abcd-02\n\
            root_b = \"PARTUUID=1234abcd-03\"\n\
            update_endpoint=https://example.invalid/u#frag\n\
            endpoint_type=HTTPS\n\
            update_name=image.zi\n\
            max_boot_failure=5\n\
            safe_slot=PARTUUID=1234abcd-04\n\
            watchdog_timeout=10\n\
            count_power_loss=no\n\
            recovery_image=recovery.zi\n\
            public_key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n\
            colour=blue\n\
            ca_cert=/etc/zboot/ca.pem\n\
            allow_http=no\n";
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.new_update_needed, Some(true));
        assert_eq!(m.root_dev, Some("/dev/mmcblk0"));
        assert_eq!(m.root_a, Some("PARTUUID=1234abcd-02"));
        assert_eq!(m.root_b, Some("PARTUUID=1234abcd-03"));
        assert_eq!(m.update_endpoint, Some("https://example.invalid/u#frag"));
        assert_eq!(m.max_boot_failure, Some(5));
        assert_eq!(m.safe_root, Some("PARTUUID=1234abcd-04"));
        assert_eq!(m.watchdog_timeout, Some(10));
        assert_eq!(m.count_power_loss, Some(false));
        assert_eq!(m.public_key.unwrap()[31], 0x1f);
        assert_eq!(m.ca_cert, Some("/etc/zboot/ca.pem"));
        assert_eq!(m.allow_http, Some(false));
        assert_eq!(m.warnings.len(), 1);
        assert_eq!(
            m.warnings[0].to_string(),
            "zbmanifest.txt line 16: unknown key 'colour' ignored"
        );
    }

    #[test]
    fn report_url_is_a_known_key_with_its_line() {
        let m = Manifest::parse(b"# reports\n\nreport_url = https://ops.example.invalid/zboot#x\n")
            .unwrap();
        assert_eq!(m.report_url, Some("https://ops.example.invalid/zboot#x"));
        assert_eq!(m.report_url_line, 3);
        assert!(
            m.warnings.is_empty(),
            "not an unknown key: {:?}",
            m.warnings
        );
        // The scheme is zbctl's to check: a loader never refuses a manifest over it.
        let m = Manifest::parse(b"report_url=http://ops.example.invalid/\n").unwrap();
        assert_eq!(m.report_url, Some("http://ops.example.invalid/"));
        assert_eq!(Manifest::parse(b"diag=no\n").unwrap().report_url_line, 0);
        assert!(matches!(
            Manifest::parse(b"report_url=https://a/\nREPORT_URL=https://b/\n"),
            Err(ManifestError {
                line: 2,
                kind: ManifestErrorKind::Duplicate {
                    key: "report_url",
                    first_line: 1
                }
            })
        ));
    }

    #[test]
    fn base64_key() {
        // 32 bytes 0x00..0x1f in base64.
        let m =
            Manifest::parse(b"public_key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        assert_eq!(m.public_key.unwrap()[1], 1);
        assert!(
            Manifest::parse(b"public_key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=").is_err()
        );
    }

    #[test]
    fn errors_name_the_line() {
        let cases: [(&[u8], ManifestError); 7] = [
            (
                b"# c\nroot_a",
                ManifestError {
                    line: 2,
                    kind: ManifestErrorKind::MissingEquals,
                },
            ),
            (
                b"\n\n=x",
                ManifestError {
                    line: 3,
                    kind: ManifestErrorKind::EmptyKey,
                },
            ),
            (
                b"max_boot_failure=16",
                ManifestError {
                    line: 1,
                    kind: ManifestErrorKind::OutOfRange {
                        key: "max_boot_failure",
                        value: 16,
                        min: 1,
                        max: 15,
                    },
                },
            ),
            (
                b"max_boot_failure=three",
                ManifestError {
                    line: 1,
                    kind: ManifestErrorKind::BadNumber {
                        key: "max_boot_failure",
                    },
                },
            ),
            (
                b"a=1\ncount_power_loss=maybe",
                ManifestError {
                    line: 2,
                    kind: ManifestErrorKind::BadBool {
                        key: "count_power_loss",
                    },
                },
            ),
            (
                b"root_a=x\r\nroot_a=y",
                ManifestError {
                    line: 2,
                    kind: ManifestErrorKind::Duplicate {
                        key: "root_a",
                        first_line: 1,
                    },
                },
            ),
            (
                b"x=1\n\xff=2",
                ManifestError {
                    line: 2,
                    kind: ManifestErrorKind::InvalidUtf8,
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(Manifest::parse(input), Err(expected));
        }
        assert_eq!(
            Manifest::parse(b"public_key=abc").unwrap_err().to_string(),
            "zbmanifest.txt line 1: public_key: 3 characters is neither 64 hex digits nor base64 of 32 bytes"
        );
    }

    #[test]
    fn many_unknown_keys_are_counted() {
        let text = b"a=1\nb=2\nc=3\nd=4\ne=5\nf=6\ng=7\nh=8\ni=9\nj=10\n";
        let m = Manifest::parse(text).unwrap();
        assert_eq!((m.warnings.len(), m.warnings_dropped), (8, 2));
    }
}
