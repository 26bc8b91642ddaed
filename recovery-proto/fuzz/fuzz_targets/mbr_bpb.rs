//! Fuzzes the MBR and FAT boot-sector parsers and the state-file locator on a small RAM disk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::block::{BLOCK_SIZE, Block, BlockDevice};
use recovery_proto::fat::FatVolume;
use recovery_proto::locate::locate_state;
use recovery_proto::partition::Mbr;

/// The fuzz input as a disk, zero-extended to 64 sectors.
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
    let mut sector = [0u8; BLOCK_SIZE];
    let n = data.len().min(BLOCK_SIZE);
    sector[..n].copy_from_slice(&data[..n]);
    let _ = Mbr::parse(&sector, 1 << 20);
    let _ = FatVolume::parse::<()>(&sector, 0, Some(1 << 20));
    let mut bytes = data.to_vec();
    bytes.resize(64 * BLOCK_SIZE, 0);
    let _ = locate_state(&mut Disk(bytes));
});
