//! Block requests: bounds checks, splitting at the Block Count limit, card addresses.

use super::Emmc2Error;
use super::card::BLOCK_SIZE;

/// Most blocks one command can move: the 16-bit Block Count register (SD
/// Host Controller spec §2.2.3; 0 would mean "stop").
pub const MAX_BLOCKS_PER_COMMAND: u16 = u16::MAX;

/// A piece of a request that one read/write command carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// First block.
    pub lba: u64,
    /// Blocks, 1..=`MAX_BLOCKS_PER_COMMAND`.
    pub blocks: u16,
    /// Offset of the chunk's first byte in the caller's buffer.
    pub byte_offset: usize,
}

/// Checks a request of `length` bytes at `lba` against a card of
/// `capacity` blocks and returns its block count.
pub fn check_request(lba: u64, length: usize, capacity: u64) -> Result<u64, Emmc2Error> {
    if !length.is_multiple_of(BLOCK_SIZE) {
        return Err(Emmc2Error::BufferLength { length });
    }
    let count = (length / BLOCK_SIZE) as u64;
    match lba.checked_add(count) {
        Some(end) if end <= capacity => Ok(count),
        _ => Err(Emmc2Error::OutOfRange {
            lba,
            count,
            capacity,
        }),
    }
}

/// Splits `count` blocks from `lba` into chunks of at most `max_blocks`
/// (which must be non-zero; 0 is treated as 1).
pub fn split_request(lba: u64, count: u64, max_blocks: u16) -> impl Iterator<Item = Chunk> {
    let max = u64::from(max_blocks.max(1));
    let mut done = 0u64;
    core::iter::from_fn(move || {
        if done >= count {
            return None;
        }
        let blocks = (count - done).min(max);
        let chunk = Chunk {
            lba: lba + done,
            blocks: blocks as u16,
            byte_offset: (done as usize) * BLOCK_SIZE,
        };
        done += blocks;
        Some(chunk)
    })
}

/// The command argument addressing block `lba`: the block number itself on
/// block-addressed cards (SDHC/SDXC, sector-mode eMMC), its byte offset on
/// SDSC and byte-mode eMMC (SD Physical Layer §4.3.14 "Command Functional
/// Difference in Card Capacity Types"). `None` if it does not fit the
/// 32-bit argument.
pub fn card_address(lba: u64, block_addressing: bool) -> Option<u32> {
    let address = if block_addressing {
        lba
    } else {
        lba.checked_mul(BLOCK_SIZE as u64)?
    };
    u32::try_from(address).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    #[test]
    fn accepts_requests_inside_the_card() {
        assert_eq!(check_request(0, 512, 8), Ok(1));
        assert_eq!(check_request(0, 0, 8), Ok(0));
        assert_eq!(check_request(4, 4 * 512, 8), Ok(4));
    }

    #[test]
    fn rejects_requests_past_the_end() {
        assert_eq!(
            check_request(5, 4 * 512, 8),
            Err(Emmc2Error::OutOfRange {
                lba: 5,
                count: 4,
                capacity: 8
            })
        );
        assert_eq!(
            check_request(u64::MAX, 512, 8),
            Err(Emmc2Error::OutOfRange {
                lba: u64::MAX,
                count: 1,
                capacity: 8
            })
        );
    }

    #[test]
    fn rejects_partial_blocks() {
        assert_eq!(
            check_request(0, 513, 8),
            Err(Emmc2Error::BufferLength { length: 513 })
        );
    }

    #[test]
    fn splits_at_the_block_count_limit() {
        let chunks: Vec<_> = split_request(10, 150_000, MAX_BLOCKS_PER_COMMAND).collect();
        assert_eq!(
            chunks,
            [
                Chunk {
                    lba: 10,
                    blocks: 65_535,
                    byte_offset: 0
                },
                Chunk {
                    lba: 65_545,
                    blocks: 65_535,
                    byte_offset: 65_535 * 512
                },
                Chunk {
                    lba: 131_080,
                    blocks: 18_930,
                    byte_offset: 131_070 * 512
                },
            ]
        );
        let total: u64 = chunks.iter().map(|chunk| u64::from(chunk.blocks)).sum();
        assert_eq!(total, 150_000);
    }

    #[test]
    fn small_and_empty_requests() {
        assert_eq!(split_request(3, 0, 8).count(), 0);
        let single: Vec<_> = split_request(3, 1, 8).collect();
        assert_eq!(
            single,
            [Chunk {
                lba: 3,
                blocks: 1,
                byte_offset: 0
            }]
        );
        assert_eq!(split_request(0, 17, 8).count(), 3);
        assert_eq!(split_request(0, 3, 0).count(), 3);
    }

    #[test]
    fn card_addresses() {
        // SDHC: block numbers.
        assert_eq!(card_address(0x12_3456, true), Some(0x12_3456));
        assert_eq!(card_address(u64::from(u32::MAX), true), Some(u32::MAX));
        assert_eq!(card_address(1 << 32, true), None);
        // SDSC: bytes.
        assert_eq!(card_address(2, false), Some(1024));
        assert_eq!(card_address((4 << 30) / 512, false), None);
    }
}
