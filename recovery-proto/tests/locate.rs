//! The MBR, BPB and FAT-chain code against real volumes made by the `fatfs` crate.
// Test helpers outside `#[test]` fns may unwrap too (clippy.toml covers only the fns).
#![allow(clippy::unwrap_used)]

use std::io::{Cursor, Write};

mod common;

use common::VecDisk;
use recovery_proto::block::{BLOCK_SIZE, Block, BlockDevice};
use recovery_proto::fat::{FatError, FatType, FatVolume, short_name};
use recovery_proto::locate::{LocateError, STATE_FILE_SIZE, locate_state};
use recovery_proto::partition::{PartUuid, gpt};
use recovery_proto::{RedundantStore, State};

const START: usize = 2048;

/// A disk with an MBR and one FAT partition of `sectors` sectors at LBA 2048.
fn disk(
    sectors: usize,
    fat: fatfs::FatType,
    cluster: u32,
    files: &[(&str, usize)],
    remove: &[&str],
) -> VecDisk {
    let mut bytes = vec![0u8; (START + sectors + 16) * BLOCK_SIZE];
    bytes[440..444].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    bytes[446] = 0x80;
    bytes[450] = 0x0C;
    bytes[454..458].copy_from_slice(&(START as u32).to_le_bytes());
    bytes[458..462].copy_from_slice(&(sectors as u32).to_le_bytes());
    bytes[510] = 0x55;
    bytes[511] = 0xAA;
    {
        let part = &mut bytes[START * BLOCK_SIZE..(START + sectors) * BLOCK_SIZE];
        fatfs::format_volume(
            Cursor::new(&mut *part),
            fatfs::FormatVolumeOptions::new()
                .fat_type(fat)
                .bytes_per_cluster(cluster),
        )
        .unwrap();
        let fs = fatfs::FileSystem::new(Cursor::new(&mut *part), fatfs::FsOptions::new()).unwrap();
        for (name, size) in files {
            let mut file = fs.root_dir().create_file(name).unwrap();
            file.write_all(&vec![0x11; *size]).unwrap();
        }
        for name in remove {
            fs.root_dir().remove(name).unwrap();
        }
        fs.unmount().unwrap();
    }
    VecDisk(bytes)
}

#[test]
fn finds_the_state_file_on_fat32_and_fat16() {
    for (sectors, fat, expected) in [
        (80_000, fatfs::FatType::Fat32, FatType::Fat32),
        (20_000, fatfs::FatType::Fat16, FatType::Fat16),
    ] {
        let mut disk = disk(
            sectors,
            fat,
            512,
            &[
                ("config.txt", 700),
                ("ZBSTATE.BIN", STATE_FILE_SIZE as usize),
            ],
            &[],
        );
        let location = locate_state(&mut disk).unwrap();
        assert_eq!(location.volume.fat_type, expected);
        assert_eq!(
            location.partition.unwrap().partuuid().to_string(),
            "deadbeef-01"
        );
        assert_eq!(location.extent.size, STATE_FILE_SIZE);
        assert_eq!(location.lbas[1], location.lbas[0] + 1);
        // The LBAs really are the file's bytes.
        let mut block = [0u8; BLOCK_SIZE];
        disk.read_block(location.lbas[0], &mut block).unwrap();
        assert!(block.iter().all(|&b| b == 0x11));
        let mut store = RedundantStore::new(location.lbas);
        store.format(&mut disk, &State::fresh()).unwrap();
        assert_eq!(
            RedundantStore::new(location.lbas)
                .load(&mut disk)
                .unwrap()
                .0,
            State::fresh()
        );
    }
}

#[test]
fn partition_device_without_mbr_works_too() {
    let disk = disk(
        20_000,
        fatfs::FatType::Fat16,
        2048,
        &[("ZBSTATE.BIN", 1024)],
        &[],
    );
    let mut partition = VecDisk(disk.0[START * BLOCK_SIZE..].to_vec());
    let location = locate_state(&mut partition).unwrap();
    assert!(location.partition.is_none());
}

#[test]
fn reports_fragmented_missing_and_short_files() {
    let mut fragmented = disk(
        20_000,
        fatfs::FatType::Fat16,
        512,
        &[("A.TXT", 512), ("B.TXT", 512)],
        &["A.TXT"],
    );
    {
        // Reuse the helper's image: add the state file into the hole left by A.TXT.
        let part = &mut fragmented.0[START * BLOCK_SIZE..(START + 20_000) * BLOCK_SIZE];
        let fs = fatfs::FileSystem::new(Cursor::new(part), fatfs::FsOptions::new()).unwrap();
        let mut file = fs.root_dir().create_file("ZBSTATE.BIN").unwrap();
        file.write_all(&[0; 1024]).unwrap();
        drop(file);
        fs.unmount().unwrap();
    }
    match locate_state(&mut fragmented) {
        Err(LocateError::Fat {
            partition: Some(1),
            error: FatError::Fragmented { cluster, next },
        }) => {
            assert_ne!(next, cluster + 1);
        }
        other => panic!("expected a fragmentation error, got {other:?}"),
    }
    let mut missing = disk(
        20_000,
        fatfs::FatType::Fat16,
        512,
        &[("config.txt", 10)],
        &[],
    );
    assert_eq!(
        locate_state(&mut missing).unwrap_err(),
        LocateError::Fat {
            partition: Some(1),
            error: FatError::NotFound
        }
    );
    let mut short = disk(
        20_000,
        fatfs::FatType::Fat16,
        512,
        &[("ZBSTATE.BIN", 100)],
        &[],
    );
    assert_eq!(
        locate_state(&mut short).unwrap_err(),
        LocateError::TooSmall { size: 100 }
    );
}

#[test]
fn bpb_errors_carry_data() {
    let disk = disk(20_000, fatfs::FatType::Fat16, 512, &[], &[]);
    let mut boot: Block = disk.0[START * BLOCK_SIZE..(START + 1) * BLOCK_SIZE]
        .try_into()
        .unwrap();
    assert!(FatVolume::parse::<()>(&boot, 0, Some(20_000)).is_ok());
    assert_eq!(
        FatVolume::parse::<()>(&boot, 0, Some(10_000)),
        Err(FatError::LargerThanPartition {
            total_sectors: 20_000,
            partition_sectors: 10_000
        })
    );
    boot[13] = 3;
    assert_eq!(
        FatVolume::parse::<()>(&boot, 0, None),
        Err(FatError::BadSectorsPerCluster { value: 3 })
    );
    boot[13] = 1;
    boot[11] = 0;
    boot[12] = 0x10;
    assert_eq!(
        FatVolume::parse::<()>(&boot, 0, None),
        Err(FatError::UnsupportedSectorSize {
            bytes_per_sector: 4096
        })
    );
    assert_eq!(short_name("ZBSTATE.BIN"), Some(*b"ZBSTATE BIN"));
    assert_eq!(short_name("zbstate.bin"), Some(*b"ZBSTATE BIN"));
    assert_eq!(short_name("toolongname.bin"), None);
}

#[test]
fn random_boot_sectors_never_panic() {
    let mut seed = 0x1234_5678_9abc_def1u64;
    for _ in 0..20_000 {
        let mut block = [0u8; BLOCK_SIZE];
        for byte in &mut block {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *byte = seed as u8;
        }
        block[510] = 0x55;
        block[511] = 0xAA;
        block[11] = 0;
        block[12] = 2;
        let _ = FatVolume::parse::<()>(&block, 0, Some(1 << 20));
        let _ = recovery_proto::partition::Mbr::parse(&block, 1 << 20);
    }
}

/// Rewrites `disk` (made by [`disk`]) as a GPT disk: the FAT volume at LBA 2048 becomes
/// entry `index` (type `kind`), with primary and backup headers over a 128-entry array.
fn to_gpt(disk: &mut VecDisk, index: usize, kind: gpt::Guid, sectors: u64) -> gpt::Guid {
    use gpt::{HeaderFields, encode_entry, encode_header};
    let blocks = (disk.0.len() / BLOCK_SIZE) as u64;
    let unique =
        gpt::Guid::from_fields(0x6a1b_2c3d, 0x4e5f, 0x4071, [0x82, 0x93, 1, 2, 3, 4, 5, 6]);
    let mut array = vec![0u8; 128 * 128];
    array[index * 128..(index + 1) * 128].copy_from_slice(&encode_entry(
        kind,
        unique,
        START as u64,
        START as u64 + sectors - 1,
        "boot",
    ));
    let crc = crc32fast::hash(&array);
    let mut put = |lba: u64, bytes: &[u8]| {
        let at = lba as usize * BLOCK_SIZE;
        disk.0[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(0, &gpt::protective_mbr(blocks));
    for (my, other, array_lba) in [(1, blocks - 1, 2), (blocks - 1, 1, blocks - 33)] {
        let header = encode_header(&HeaderFields {
            my_lba: my,
            alternate_lba: other,
            first_usable_lba: 34,
            last_usable_lba: blocks - 34,
            disk_guid: gpt::Guid([7; 16]),
            entry_array_lba: array_lba,
            entry_count: 128,
            entry_array_crc: crc,
        });
        put(my, &header);
        put(array_lba, &array);
    }
    unique
}

#[test]
fn finds_the_state_file_on_gpt_disks() {
    // `disk` leaves 16 sectors after the volume; 32 more make room for the backup array and
    // header.
    for kind in [gpt::BASIC_DATA, gpt::EFI_SYSTEM] {
        let mut disk = disk(
            80_000,
            fatfs::FatType::Fat32,
            512,
            &[("ZBSTATE.BIN", STATE_FILE_SIZE as usize)],
            &[],
        );
        disk.0.extend_from_slice(&[0; 32 * BLOCK_SIZE]);
        let unique = to_gpt(&mut disk, 2, kind, 80_000);
        let location = locate_state(&mut disk).unwrap();
        let partition = location.partition.unwrap();
        assert_eq!((partition.number, partition.start_lba), (3, START as u64));
        assert_eq!(
            partition.partuuid().to_string(),
            "6a1b2c3d-4e5f-4071-8293-010203040506"
        );
        assert_eq!(partition.partuuid, PartUuid::Gpt(unique));
        let mut block = [0u8; BLOCK_SIZE];
        disk.read_block(location.lbas[0], &mut block).unwrap();
        assert!(block.iter().all(|&b| b == 0x11));
        // The primary header destroyed: the backup still finds it.
        disk.0[BLOCK_SIZE..2 * BLOCK_SIZE].fill(0);
        assert_eq!(locate_state(&mut disk).unwrap().lbas, location.lbas);
    }
}

#[test]
fn gpt_without_a_boot_type_or_with_bad_headers_is_refused() {
    let mut disk = disk(20_000, fatfs::FatType::Fat16, 512, &[], &[]);
    disk.0.extend_from_slice(&[0; 32 * BLOCK_SIZE]);
    to_gpt(&mut disk, 0, gpt::LINUX_FILESYSTEM, 20_000);
    assert!(matches!(
        locate_state(&mut disk),
        Err(LocateError::NoFatPartition)
    ));
    let blocks = disk.0.len() / BLOCK_SIZE;
    disk.0[BLOCK_SIZE + 20] ^= 1;
    disk.0[(blocks - 1) * BLOCK_SIZE + 20] ^= 1;
    assert!(matches!(
        locate_state(&mut disk),
        Err(LocateError::Gpt(gpt::GptError::BothHeadersBad {
            primary: gpt::HeaderError::HeaderCrcMismatch { lba: 1, .. },
            ..
        }))
    ));
}
