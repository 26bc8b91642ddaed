//! Decoding the board revision code the firmware reports (mailbox tag 0x00010002).
//!
//! New-style codes (flag bit 23 set) pack the board's identity as
//! `NOQuuuWuFMMMCCCCPPPPTTTTTTTTRRRR` (Raspberry Pi documentation, "Raspberry
//! Pi revision codes"): memory size in bits 22:20, manufacturer in 19:16,
//! processor in 15:12, board type in 11:4 and revision in 3:0.

use core::fmt;

/// A decoded new-style revision code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoardRevision {
    code: u32,
}

impl BoardRevision {
    /// Bit 23: the code uses the new-style layout.
    const NEW_STYLE: u32 = 1 << 23;

    /// Decodes `code`; `None` for old-style codes (boards before the Pi 2,
    /// which zboot never runs on).
    pub const fn new(code: u32) -> Option<Self> {
        if code & Self::NEW_STYLE == 0 {
            None
        } else {
            Some(Self { code })
        }
    }

    /// The raw code.
    pub const fn code(self) -> u32 {
        self.code
    }

    /// Board type (bits 11:4), e.g. 0x11 = Pi 4 Model B, 0x14 = CM4.
    pub const fn board_type(self) -> u8 {
        ((self.code >> 4) & 0xff) as u8
    }

    /// Board revision, the minor number of "1.x" (bits 3:0).
    pub const fn revision(self) -> u8 {
        (self.code & 0xf) as u8
    }

    /// Memory size in MiB (bits 22:20: 256 MiB << n).
    pub const fn memory_mib(self) -> u32 {
        256 << ((self.code >> 20) & 0x7)
    }

    /// Processor (bits 15:12).
    pub const fn processor(self) -> &'static str {
        match (self.code >> 12) & 0xf {
            0 => "BCM2835",
            1 => "BCM2836",
            2 => "BCM2837",
            3 => "BCM2711",
            4 => "BCM2712",
            _ => "unknown processor",
        }
    }

    /// Board model name, for the types zboot may meet.
    pub const fn model(self) -> &'static str {
        match self.board_type() {
            0x08 => "Pi 3 Model B",
            0x0d => "Pi 3 Model B+",
            0x0a => "Compute Module 3",
            0x10 => "Compute Module 3+",
            0x11 => "Pi 4 Model B",
            0x13 => "Pi 400",
            0x14 => "Compute Module 4",
            0x18 => "Compute Module 4S",
            _ => "unknown board type",
        }
    }

    /// Whether this is a board zboot targets (BCM2711: Pi 4, Pi 400, CM4, CM4S).
    pub const fn is_bcm2711(self) -> bool {
        (self.code >> 12) & 0xf == 3
    }
}

impl fmt::Display for BoardRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let memory = self.memory_mib();
        write!(f, "{} rev 1.{}, ", self.model(), self.revision())?;
        if memory >= 1024 {
            write!(f, "{} GiB", memory / 1024)?;
        } else {
            write!(f, "{memory} MiB")?;
        }
        write!(f, ", {}", self.processor())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pi4_model_b_as_qemu_reports_it() {
        let revision = BoardRevision::new(0x00b0_3115).unwrap();
        assert_eq!(revision.board_type(), 0x11);
        assert_eq!(revision.memory_mib(), 2048);
        assert!(revision.is_bcm2711());
        assert_eq!(revision.to_string(), "Pi 4 Model B rev 1.5, 2 GiB, BCM2711");
    }

    #[test]
    fn cm4_with_8_gib() {
        // CM4 rev 1.0, 8 GiB, Sony UK: 0xd03140.
        let revision = BoardRevision::new(0x00d0_3140).unwrap();
        assert_eq!(revision.model(), "Compute Module 4");
        assert_eq!(
            revision.to_string(),
            "Compute Module 4 rev 1.0, 8 GiB, BCM2711"
        );
    }

    #[test]
    fn old_style_codes_are_not_decoded() {
        assert_eq!(BoardRevision::new(0x0000_000e), None);
    }
}
