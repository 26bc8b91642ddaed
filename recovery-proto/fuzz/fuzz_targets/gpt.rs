//! Fuzzes the GPT reader (headers, backup fallback, entry array) and the locator over it: the
//! input is the disk from LBA 1 on, behind a valid protective MBR so every run reaches the
//! GPT code; it is zero-extended to at least 16 sectors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::block::{BLOCK_SIZE, Block, BlockDevice};
use recovery_proto::locate::locate_state;
use recovery_proto::partition::{Partitions, gpt};

struct Disk(Vec<u8>);

impl BlockDevice for Disk {
    type Error = ();

    fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), ()> {
        let at = usize::try_from(lba).map_err(|_| ())? * BLOCK_SIZE;
        buffer.copy_from_slice(self.0.get(at..at + BLOCK_SIZE).ok_or(())?);
        Ok(())
    }

    fn write_block(&mut self, _: u64, _: &Block) -> Result<(), ()> {
        Err(())
    }

    fn block_count(&self) -> u64 {
        (self.0.len() / BLOCK_SIZE) as u64
    }
}

fuzz_target!(|data: &[u8]| {
    let blocks = (data.len().div_ceil(BLOCK_SIZE) + 1).clamp(16, 512);
    let mut bytes = gpt::protective_mbr(blocks as u64).to_vec();
    bytes.extend_from_slice(data);
    bytes.resize(blocks * BLOCK_SIZE, 0);
    let mut disk = Disk(bytes);
    if let Ok(Partitions::Gpt(table)) = Partitions::read(&mut disk) {
        for p in table.partitions() {
            assert!(table.first_usable_lba <= p.first_lba && p.first_lba <= p.last_lba);
            assert!(p.last_lba <= table.last_usable_lba && p.last_lba < blocks as u64);
        }
    }
    let _ = locate_state(&mut disk);
});
