//! Test helpers shared by the integration tests.
#![allow(clippy::unwrap_used, dead_code)]

use recovery_proto::block::{BLOCK_SIZE, Block, BlockDevice};

/// A disk held in a `Vec`, for volumes built with the `fatfs` crate.
pub struct VecDisk(pub Vec<u8>);

impl BlockDevice for VecDisk {
    type Error = &'static str;

    fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), Self::Error> {
        let at = usize::try_from(lba).unwrap() * BLOCK_SIZE;
        buffer.copy_from_slice(self.0.get(at..at + BLOCK_SIZE).ok_or("out of range")?);
        Ok(())
    }

    fn write_block(&mut self, lba: u64, buffer: &Block) -> Result<(), Self::Error> {
        let at = usize::try_from(lba).unwrap() * BLOCK_SIZE;
        self.0
            .get_mut(at..at + BLOCK_SIZE)
            .ok_or("out of range")?
            .copy_from_slice(buffer);
        Ok(())
    }

    fn block_count(&self) -> u64 {
        (self.0.len() / BLOCK_SIZE) as u64
    }
}
