//! Which sectors of a partition a file system leaves unused (so `image convert` can skip
//! them): ext2/3/4 block bitmaps and FAT free clusters, parsed from the partition's bytes.
//!
//! Every function answers conservatively: a layout it does not fully understand yields
//! `None` ("treat every sector as used"), never a guess that could drop data.
//!
//! ext4 facts used (the on-disk layout as documented in the Linux kernel's
//! `Documentation/filesystems/ext4/`): superblock at byte 1024, magic 0xEF53 at 56; group
//! descriptors in the block after the superblock's; `bg_flags` bit 1 = `BLOCK_UNINIT`
//! (bitmap not initialised: the group holds only metadata and, with `sparse_super`, a
//! superblock backup in groups 0, 1 and powers of 3, 5 and 7).

use std::io::{self, Read, Seek, SeekFrom};

use recovery_proto::fat::{FatType, FatVolume};

/// A per-sector map: `true` = the file system does not use this sector.
pub type FreeMap = Vec<bool>;

const EXT_MAGIC: u16 = 0xEF53;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const BG_BLOCK_UNINIT: u16 = 0x2;

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn read_at<R: Read + Seek>(r: &mut R, at: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; len];
    r.seek(SeekFrom::Start(at))?;
    r.read_exact(&mut buffer)?;
    Ok(buffer)
}

/// Which file system a partition holds (by its magic numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// ext2/3/4.
    Ext,
    /// FAT16/32 (FAT12 is treated as unknown).
    Fat,
    /// Anything else: every sector counts as used.
    Unknown,
}

fn boot_sector(head: &[u8]) -> [u8; 512] {
    let mut boot = [0u8; 512];
    if let Some(src) = head.get(..512) {
        boot.copy_from_slice(src);
    }
    boot
}

/// Detects the file system of a partition.
pub fn detect<R: Read + Seek>(partition: &mut R, size: u64) -> io::Result<FsKind> {
    if size < 2048 {
        return Ok(FsKind::Unknown);
    }
    let head = read_at(partition, 0, 2048)?;
    if le16(&head, 1024 + 56) == EXT_MAGIC {
        return Ok(FsKind::Ext);
    }
    if FatVolume::parse::<()>(&boot_sector(&head), 0, Some(size / 512)).is_ok() {
        return Ok(FsKind::Fat);
    }
    Ok(FsKind::Unknown)
}

/// The free sectors of a partition, or `None` when its file system is unknown or not fully
/// understood.
pub fn free_map<R: Read + Seek>(partition: &mut R, size: u64) -> io::Result<Option<FreeMap>> {
    match detect(partition, size)? {
        FsKind::Ext => ext_free_map(partition, size),
        FsKind::Fat => fat_free_map(partition, size),
        FsKind::Unknown => Ok(None),
    }
}

fn mark_free(free: &mut FreeMap, first: u64, count: u64) {
    let first = usize::try_from(first).unwrap_or(usize::MAX);
    let count = usize::try_from(count).unwrap_or(0);
    let end = first.saturating_add(count).min(free.len());
    if let Some(slots) = free.get_mut(first.min(end)..end) {
        slots.fill(true);
    }
}

/// ext2/3/4: free blocks from the block bitmaps.
#[allow(clippy::too_many_lines)] // one walk over the superblock and groups reads best whole
pub fn ext_free_map<R: Read + Seek>(partition: &mut R, size: u64) -> io::Result<Option<FreeMap>> {
    let sb = read_at(partition, 1024, 1024)?;
    if le16(&sb, 56) != EXT_MAGIC {
        return Ok(None);
    }
    let log = le32(&sb, 24);
    if log > 6 {
        return Ok(None);
    }
    let block_size = 1024u64 << log;
    let incompat = le32(&sb, 96);
    let ro_compat = le32(&sb, 100);
    let wide = incompat & INCOMPAT_64BIT != 0;
    let blocks = u64::from(le32(&sb, 4))
        | if wide {
            u64::from(le32(&sb, 0x150)) << 32
        } else {
            0
        };
    let first_data_block = u64::from(le32(&sb, 20));
    let per_group = u64::from(le32(&sb, 32));
    let inodes_per_group = u64::from(le32(&sb, 40));
    let inode_size = u64::from(le16(&sb, 88)).max(128);
    let desc_size = if wide {
        u64::from(le16(&sb, 254)).max(32)
    } else {
        32
    };
    // meta_bg moves the descriptors around; not worth the risk for a boot stage's images.
    if incompat & INCOMPAT_META_BG != 0
        || per_group == 0
        || per_group > block_size * 8
        || blocks * block_size > size
        || blocks <= first_data_block
    {
        return Ok(None);
    }
    let groups = (blocks - first_data_block).div_ceil(per_group);
    let gdt_blocks = (groups * desc_size).div_ceil(block_size);
    let reserved_gdt = u64::from(le16(&sb, 206));
    let gdt = read_at(
        partition,
        (first_data_block + 1) * block_size,
        usize::try_from(gdt_blocks * block_size).unwrap_or(0),
    )?;
    let descriptor = |g: u64| {
        let at = usize::try_from(g * desc_size).unwrap_or(usize::MAX);
        let lo_hi = |lo: usize, hi: usize| {
            u64::from(le32(&gdt, at + lo))
                | if desc_size >= 64 {
                    u64::from(le32(&gdt, at + hi)) << 32
                } else {
                    0
                }
        };
        (
            lo_hi(0, 0x20),
            lo_hi(4, 0x24),
            lo_hi(8, 0x28),
            le16(&gdt, at + 18),
        )
    };
    let has_super = |g: u64| {
        if ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g <= 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&base| {
            let mut n = base;
            while n < g {
                n *= base;
            }
            n == g
        })
    };
    let sectors_per_block = block_size / 512;
    let mut free = vec![false; usize::try_from(size / 512).unwrap_or(0)];
    let table_blocks = (inodes_per_group * inode_size).div_ceil(block_size);
    for g in 0..groups {
        let (bitmap, _, _, flags) = descriptor(g);
        let group_start = first_data_block + g * per_group;
        let group_blocks = per_group.min(blocks - group_start);
        let used: Vec<bool> = if flags & BG_BLOCK_UNINIT == 0 {
            if bitmap == 0 || bitmap >= blocks {
                return Ok(None);
            }
            let bytes = read_at(
                partition,
                bitmap * block_size,
                usize::try_from(block_size).unwrap_or(0),
            )?;
            (0..group_blocks)
                .map(|i| {
                    let i = usize::try_from(i).unwrap_or(usize::MAX);
                    bytes
                        .get(i / 8)
                        .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
                })
                .collect()
        } else {
            // Not initialised: only metadata is in use, computed as the kernel does.
            let mut used = vec![false; usize::try_from(group_blocks).unwrap_or(0)];
            let mut mark = |block: u64, count: u64| {
                for b in block..block + count {
                    if (group_start..group_start + group_blocks).contains(&b)
                        && let Some(slot) =
                            used.get_mut(usize::try_from(b - group_start).unwrap_or(usize::MAX))
                    {
                        *slot = true;
                    }
                }
            };
            if has_super(g) {
                mark(group_start, 1 + gdt_blocks + reserved_gdt);
            }
            for other in 0..groups {
                let (block_bitmap, inode_bitmap, inode_table, _) = descriptor(other);
                mark(block_bitmap, 1);
                mark(inode_bitmap, 1);
                mark(inode_table, table_blocks);
            }
            used
        };
        for (i, used) in used.iter().enumerate() {
            if !used {
                let block = group_start + i as u64;
                mark_free(&mut free, block * sectors_per_block, sectors_per_block);
            }
        }
    }
    Ok(Some(free))
}

/// FAT16/32: free clusters (FAT entry 0) from the first FAT.
pub fn fat_free_map<R: Read + Seek>(partition: &mut R, size: u64) -> io::Result<Option<FreeMap>> {
    let head = read_at(partition, 0, 512)?;
    let Ok(volume) = FatVolume::parse::<()>(&boot_sector(&head), 0, Some(size / 512)) else {
        return Ok(None);
    };
    let width = if volume.fat_type == FatType::Fat32 {
        4
    } else {
        2
    };
    let fat = read_at(
        partition,
        u64::from(volume.reserved_sectors) * 512,
        usize::try_from(u64::from(volume.fat_sectors) * 512).unwrap_or(0),
    )?;
    let mut free = vec![false; usize::try_from(size / 512).unwrap_or(0)];
    for cluster in 2..volume.cluster_count + 2 {
        let at = cluster as usize * width;
        let entry = if width == 4 {
            le32(&fat, at) & 0x0FFF_FFFF
        } else {
            u32::from(le16(&fat, at))
        };
        if entry != 0 {
            continue;
        }
        if let Some(lba) = volume.cluster_lba(cluster) {
            mark_free(&mut free, lba, u64::from(volume.sectors_per_cluster));
        }
    }
    Ok(Some(free))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::process::Command;

    /// `dumpe2fs` lists "Free blocks: a-b, c" per group; the bitmap walk must agree.
    fn dumpe2fs_free_blocks(path: &std::path::Path) -> Vec<u64> {
        let out = Command::new("dumpe2fs").arg(path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut free = Vec::new();
        for line in text.lines() {
            let Some(list) = line.strip_prefix("  Free blocks: ") else {
                continue;
            };
            for range in list.split(", ").filter(|r| !r.is_empty()) {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                free.extend(a.parse::<u64>().unwrap()..=b.parse::<u64>().unwrap());
            }
        }
        free
    }

    #[test]
    fn ext4_free_blocks_match_dumpe2fs() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("content");
        std::fs::create_dir(&content).unwrap();
        std::fs::write(content.join("file"), vec![7u8; 300_000]).unwrap();
        let image = dir.path().join("ext4.img");
        for block_size in ["1024", "4096"] {
            let status = Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-b", block_size, "-d"])
                .arg(&content)
                .arg(&image)
                .arg("64M")
                .status()
                .unwrap();
            assert!(status.success());
            let size = std::fs::metadata(&image).unwrap().len();
            let map = ext_free_map(&mut File::open(&image).unwrap(), size)
                .unwrap()
                .unwrap();
            let per_block = block_size.parse::<usize>().unwrap() / 512;
            let ours: Vec<u64> = map
                .chunks(per_block)
                .enumerate()
                .filter(|(_, c)| c.iter().all(|&f| f))
                .map(|(i, _)| i as u64)
                .collect();
            assert_eq!(
                ours,
                dumpe2fs_free_blocks(&image),
                "block size {block_size}"
            );
            assert!(ours.len() > 1000, "mostly free");
        }
    }

    #[test]
    fn unknown_bytes_are_all_used() {
        let mut zeros = io::Cursor::new(vec![0u8; 1 << 20]);
        assert_eq!(free_map(&mut zeros, 1 << 20).unwrap(), None);
    }
}
