//! zboot's pure boot policy and on-disk formats, free of hardware and of `unsafe`.
//!
//! The loader's path through this crate on every boot:
//!
//! 1. [`locate::locate_state`] over a [`BlockDevice`]: MBR or GPT ([`partition`]) → FAT boot
//!    volume ([`fat`]) → the contiguous `ZBSTATE.BIN` → the two LBAs of the state copies.
//! 2. [`RedundantStore::load_or_fallback`]: the newest valid copy, or SAFE-only.
//! 3. [`manifest::Manifest::parse`] on `zbmanifest.txt` for the policy overrides.
//! 4. [`decide()`] with the [`Facts`]; log [`Outcome::reason`]; persist with
//!    [`RedundantStore::save_if_changed`] before hand-off.
//!
//! `zbctl` uses the same code plus the user-space edits in [`ops`]. The rules are in
//! [`mod@decide`]'s docs and `docs/slot-state.md`.
#![no_std]
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod block;
pub mod cmdline;
pub mod config_txt;
pub mod decide;
pub mod digest;
pub mod dtb;
pub mod fat;
#[cfg(test)]
mod fault_injection;
pub mod gzip;
pub mod image;
pub mod kernel_image;
pub mod locate;
pub mod manifest;
pub mod ops;
pub mod partition;
pub mod reflash;
pub mod slot;
pub mod slot_manifest;
pub mod slot_signature;
pub mod state;
pub mod store;

pub use block::{BLOCK_SIZE, Block, BlockDevice};
pub use decide::{Decision, Facts, Outcome, Reason, RecoveryCause, Skip, SlotFiles, decide};
pub use ops::OpError;
pub use slot::{BootOutcome, ResetReason, Slot, SlotState};
pub use state::{DecodeError, State};
pub use store::RedundantStore;
