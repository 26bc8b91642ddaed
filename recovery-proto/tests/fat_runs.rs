//! Cluster runs of files on real FAT16/FAT32 volumes made by the `fatfs` crate.
#![allow(clippy::unwrap_used)]

use std::io::{Cursor, Write};

mod common;

use common::VecDisk;
use recovery_proto::block::{BLOCK_SIZE, BlockDevice};
use recovery_proto::fat::{FatError, FatType, FatVolume, RunError, SectorRun, short_name};

fn pattern(seed: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
        .collect()
}

/// A bare FAT volume (no MBR) with `steps` applied: `(name, Some(size))`
/// appends `size` bytes to `name`, `(name, None)` removes it.
fn volume(fat: fatfs::FatType, cluster: u32, steps: &[(&str, Option<usize>)]) -> VecDisk {
    let mut bytes = vec![0u8; 80_000 * BLOCK_SIZE];
    fatfs::format_volume(
        Cursor::new(&mut bytes[..]),
        fatfs::FormatVolumeOptions::new()
            .fat_type(fat)
            .bytes_per_cluster(cluster),
    )
    .unwrap();
    {
        let fs =
            fatfs::FileSystem::new(Cursor::new(&mut bytes[..]), fatfs::FsOptions::new()).unwrap();
        for (index, (name, step)) in steps.iter().enumerate() {
            match step {
                Some(size) => {
                    let mut file = fs.root_dir().create_file(name).unwrap();
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).unwrap();
                    file.write_all(&pattern(index as u8 + 1, *size)).unwrap();
                }
                None => fs.root_dir().remove(name).unwrap(),
            }
        }
        fs.unmount().unwrap();
    }
    VecDisk(bytes)
}

/// Reads a file through its runs; returns the bytes, the runs and FAT reads.
fn read_by_runs(disk: &mut VecDisk, name: &str) -> (Vec<u8>, Vec<SectorRun>, u32) {
    let volume = FatVolume::open(disk, 0, None).unwrap();
    let entry = volume
        .find_in_root(disk, &short_name(name).unwrap())
        .unwrap();
    let mut runs = Vec::new();
    let mut data = Vec::new();
    let fat_reads = volume
        .for_each_run(disk, entry.first_cluster, entry.size, |disk, run| {
            runs.push(run);
            for sector in 0..run.sectors {
                let mut block = [0u8; BLOCK_SIZE];
                disk.read_block(run.lba + sector, &mut block)?;
                data.extend_from_slice(&block);
            }
            Ok::<_, &'static str>(())
        })
        .unwrap();
    data.truncate(entry.size as usize);
    (data, runs, fat_reads)
}

#[test]
fn a_contiguous_file_is_one_run_with_few_fat_reads() {
    for (fat, per_fat_sector) in [(fatfs::FatType::Fat32, 128), (fatfs::FatType::Fat16, 256)] {
        let size = 3 * 1024 * 1024 + 123;
        let mut disk = volume(fat, 4096, &[("KERNEL.IMG", Some(size))]);
        let (data, runs, fat_reads) = read_by_runs(&mut disk, "KERNEL.IMG");
        assert_eq!(data, pattern(1, size));
        assert_eq!(runs.len(), 1, "{fat:?}: {runs:?}");
        assert_eq!(
            runs[0].sectors,
            size.div_ceil(BLOCK_SIZE) as u64,
            "trimmed to the size"
        );
        let clusters = size.div_ceil(4096) as u32;
        assert!(
            fat_reads <= clusters / per_fat_sector + 2,
            "{fat:?}: {fat_reads} FAT reads"
        );
    }
}

#[test]
fn a_fragmented_file_yields_each_run_in_order() {
    // Appending to A and B in turn interleaves their clusters: A's chain
    // becomes A1 B1 A2 B2 A3 ... with B's clusters between A's.
    let mut disk = volume(
        fatfs::FatType::Fat32,
        4096,
        &[
            ("A.BIN", Some(8192)),
            ("B.BIN", Some(8192)),
            ("A.BIN", Some(8192)),
            ("B.BIN", Some(8192)),
            ("A.BIN", Some(5000)),
        ],
    );
    let (data, runs, _) = read_by_runs(&mut disk, "A.BIN");
    let expected = [pattern(1, 8192), pattern(3, 8192), pattern(5, 5000)].concat();
    assert_eq!(data, expected);
    assert_eq!(runs.len(), 3, "A is in three pieces: {runs:?}");
    let sectors: u64 = runs.iter().map(|run| run.sectors).sum();
    assert_eq!(sectors, (expected.len() as u64).div_ceil(BLOCK_SIZE as u64));
    for pair in runs.windows(2) {
        assert_ne!(
            pair[0].lba + pair[0].sectors,
            pair[1].lba,
            "runs are maximal"
        );
    }
}

#[test]
fn a_size_longer_than_the_chain_is_an_error() {
    let mut disk = volume(fatfs::FatType::Fat32, 4096, &[("K.IMG", Some(10_000))]);
    let volume = FatVolume::open(&mut disk, 0, None).unwrap();
    let entry = volume
        .find_in_root(&mut disk, &short_name("K.IMG").unwrap())
        .unwrap();
    let error = volume
        .for_each_run(&mut disk, entry.first_cluster, entry.size + 8192, |_, _| {
            Ok::<_, ()>(())
        })
        .unwrap_err();
    assert!(
        matches!(
            error,
            RunError::Fat(FatError::ChainTooShort {
                clusters: 3,
                expected: 5,
                ..
            })
        ),
        "{error:?}"
    );
    let error = volume
        .for_each_run(&mut disk, entry.first_cluster, 100, |_, _| Ok::<_, ()>(()))
        .unwrap_err();
    assert!(
        matches!(error, RunError::Fat(FatError::ChainTooLong { expected: 1 })),
        "{error:?}"
    );
}

#[test]
fn a_looping_chain_stops_at_the_size() {
    let mut disk = volume(fatfs::FatType::Fat32, 4096, &[("L.IMG", Some(8192))]);
    let volume = FatVolume::open(&mut disk, 0, None).unwrap();
    let entry = volume
        .find_in_root(&mut disk, &short_name("L.IMG").unwrap())
        .unwrap();
    // Point the file's second cluster back at its first: a loop.
    let second = entry.first_cluster + 1;
    let width = if volume.fat_type == FatType::Fat32 {
        4
    } else {
        2
    };
    let offset = volume.reserved_sectors as usize * BLOCK_SIZE + second as usize * width;
    disk.0[offset..offset + width].copy_from_slice(&entry.first_cluster.to_le_bytes()[..width]);
    let error = volume
        .for_each_run(&mut disk, entry.first_cluster, 1 << 20, |_, _| {
            Ok::<_, ()>(())
        })
        .unwrap_err();
    // The walk is bounded by the size: it ends with a chain error, not a hang.
    assert!(
        matches!(
            error,
            RunError::Fat(FatError::ChainTooLong { expected: 256 })
        ),
        "{error:?}"
    );
}

#[test]
fn a_sink_error_stops_the_walk() {
    let mut disk = volume(fatfs::FatType::Fat16, 2048, &[("S.IMG", Some(5000))]);
    let volume = FatVolume::open(&mut disk, 0, None).unwrap();
    let entry = volume
        .find_in_root(&mut disk, &short_name("S.IMG").unwrap())
        .unwrap();
    let error = volume
        .for_each_run(&mut disk, entry.first_cluster, entry.size, |_, _| {
            Err("full")
        })
        .unwrap_err();
    assert_eq!(error, RunError::Sink("full"));
}
