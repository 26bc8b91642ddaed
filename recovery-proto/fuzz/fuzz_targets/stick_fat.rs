//! Fuzzes finding and reading the recovery image on a stick's FAT: the partition table or
//! boot sector, the root directory, the FAT chain (loops, links past the volume, free or
//! reserved clusters) and reads of the file at any offset.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery_proto::block::{BLOCK_SIZE, Block, BlockDevice};
use recovery_proto::image::ImageSource;
use recovery_proto::reflash::StickImage;

/// Sectors of the stick: the input, then zeros (a FAT16 volume needs 4085 clusters).
const STICK_SECTORS: u64 = 16_384;

/// The fuzz input as the start of a stick of [`STICK_SECTORS`] sectors, zeros after it.
struct Stick<'a>(&'a [u8]);

impl BlockDevice for Stick<'_> {
    type Error = ();

    fn read_block(&mut self, lba: u64, buffer: &mut Block) -> Result<(), ()> {
        if lba >= STICK_SECTORS {
            return Err(());
        }
        buffer.fill(0);
        let at = usize::try_from(lba).map_err(|_| ())?.saturating_mul(BLOCK_SIZE);
        if let Some(rest) = self.0.get(at..) {
            let take = rest.len().min(BLOCK_SIZE);
            buffer[..take].copy_from_slice(&rest[..take]);
        }
        Ok(())
    }

    fn write_block(&mut self, _: u64, _: &Block) -> Result<(), ()> {
        Err(())
    }

    fn block_count(&self) -> u64 {
        STICK_SECTORS
    }
}

fuzz_target!(|data: &[u8]| {
    let mut stick = Stick(data);
    let Ok(mut file) = StickImage::open(&mut stick, "ZBOOT.ZI") else {
        return;
    };
    let length = file.len();
    let mut buffer = vec![0u8; 1500];
    // Front to back in odd-sized pieces, then a few reads at the edges.
    let mut at = 0u64;
    while at < length.min(64 * 1024) {
        let take = buffer.len().min((length - at) as usize);
        if file.read_exact_at(at, &mut buffer[..take]).is_err() {
            break;
        }
        at += take as u64;
    }
    let _ = file.read_exact_at(length.saturating_sub(3), &mut [0; 3]);
    let _ = file.read_exact_at(length, &mut [0; 1]);
    let _ = file.read_exact_at(u64::MAX - 1, &mut [0; 4]);
});
