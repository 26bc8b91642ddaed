//! Fuzzes the reflash journal's record decoder and the pick of the newest of two copies:
//! the sectors come from an eMMC that may hold anything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::block::{BLOCK_SIZE, RamDisk};
use recovery_proto::reflash::journal::{DiskJournal, Record};

fuzz_target!(|data: &[u8]| {
    let mut sectors = [[0u8; BLOCK_SIZE]; 2];
    for (sector, chunk) in sectors.iter_mut().zip(data.chunks(BLOCK_SIZE)) {
        sector[..chunk.len()].copy_from_slice(chunk);
    }
    for sector in &sectors {
        if let Ok((record, sequence)) = Record::decode(sector) {
            assert_eq!(
                Record::decode(&record.encode(sequence)),
                Ok((record, sequence))
            );
        }
    }
    let mut disk = RamDisk::new(4);
    disk.block_mut(1).unwrap().copy_from_slice(&sectors[0]);
    disk.block_mut(2).unwrap().copy_from_slice(&sectors[1]);
    let mut journal = DiskJournal::new([1, 2]);
    if let Ok(Some(entry)) = journal.load(&mut disk) {
        let mut name = [0u8; 12];
        let _ = entry.stick_name(&mut name);
        let _ = journal.record(&mut disk, &entry);
    }
    let _ = journal.clear(&mut disk);
});
