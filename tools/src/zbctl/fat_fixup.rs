//! Repairs what the `fatfs` crate (0.3.6) leaves behind on a FAT32 volume, so that
//! `fsck.fat -n` (dosfstools) finds nothing to report.
//!
//! Found by running `fsck.fat -n` on volumes that `fatfs` formatted and filled:
//!
//! 1. **Dot entries of new directories.** `Dir::create_dir` writes a long-file-name entry in
//!    front of `.` and of `..`, so the directory's first two slots are not `.` and `..`
//!    (fsck: "Expected a valid '.' entry in this slot", then renames them `FSCK0000.000`).
//!    The FAT specification (Microsoft "FAT: General Overview of On-Disk Format",
//!    section "FAT Directory Structure") wants `.` and `..` as the first two entries.
//! 2. **`..` of a directory in the root.** It points at the FAT32 root cluster (2); the
//!    specification says a `..` that refers to the root holds cluster 0 (fsck: "share
//!    clusters ... first is FAT32 root dir").
//! 3. **FSInfo free count.** `format_volume` leaves the FSInfo free-cluster count at
//!    0xFFFFFFFF ("unknown") and mounting does not compute it (fsck: "Free cluster summary
//!    uninitialized"). The count and the next-free hint are recomputed from the FAT.
//!
//! The fix works on the volume's bytes in memory after `fatfs` has unmounted. Fix 1 rewrites
//! the four slots in place (`.`, `..`, then two deleted entries), so nothing moves.

use anyhow::{Context, Result, bail, ensure};
use recovery_proto::BLOCK_SIZE;
use recovery_proto::fat::{FatType, FatVolume};

const ENTRY: usize = 32;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;
const DELETED: u8 = 0xE5;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";
/// FSInfo signatures (FAT specification, "FAT32 FSInfo Sector Structure").
const FSINFO_LEAD: u32 = 0x4161_5252;
const FSINFO_STRUCT: u32 = 0x6141_7272;
/// Directory nesting followed at most (the boot partition has `/A/`, `/overlays/`, ...).
const MAX_DEPTH: usize = 8;

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// A FAT32 volume held in memory.
struct Volume<'a> {
    bytes: &'a mut [u8],
    layout: FatVolume,
}

impl Volume<'_> {
    fn cluster_bytes(&self) -> usize {
        self.layout.sectors_per_cluster as usize * BLOCK_SIZE
    }

    fn cluster_offset(&self, cluster: u32) -> Result<usize> {
        ensure!(
            (2..self.layout.cluster_count + 2).contains(&cluster),
            "cluster {cluster} is outside the volume"
        );
        let sector = u64::from(self.layout.first_data_sector)
            + u64::from(cluster - 2) * u64::from(self.layout.sectors_per_cluster);
        Ok(usize::try_from(sector)? * BLOCK_SIZE)
    }

    fn fat_entry(&self, cluster: u32) -> u32 {
        let at = self.layout.reserved_sectors as usize * BLOCK_SIZE + cluster as usize * 4;
        le32(self.bytes, at) & 0x0FFF_FFFF
    }

    /// The clusters of a chain, bounded by the cluster count.
    fn chain(&self, first: u32) -> Result<Vec<u32>> {
        let mut clusters = vec![first];
        let mut cluster = first;
        loop {
            let next = self.fat_entry(cluster);
            if next >= 0x0FFF_FFF8 {
                return Ok(clusters);
            }
            ensure!(
                clusters.len() <= self.layout.cluster_count as usize,
                "cluster chain from {first} loops"
            );
            self.cluster_offset(next)?;
            clusters.push(next);
            cluster = next;
        }
    }

    /// Subdirectories (first clusters) listed in the directory starting at `dir`.
    fn subdirectories(&self, dir: u32) -> Result<Vec<u32>> {
        let mut found = Vec::new();
        for cluster in self.chain(dir)? {
            let start = self.cluster_offset(cluster)?;
            for at in (start..start + self.cluster_bytes()).step_by(ENTRY) {
                let entry = &self.bytes[at..at + ENTRY];
                match entry[0] {
                    0 => return Ok(found),
                    DELETED | b'.' => continue,
                    _ => {}
                }
                let attributes = entry[11];
                if attributes == ATTR_LONG_NAME
                    || attributes & ATTR_VOLUME_ID != 0
                    || attributes & ATTR_DIRECTORY == 0
                {
                    continue;
                }
                let first = (u32::from(le16(entry, 20)) << 16) | u32::from(le16(entry, 26));
                found.push(first);
            }
        }
        Ok(found)
    }

    /// Fix 1 and 2 for the directory at `dir` whose parent is `parent`.
    fn fix_dot_entries(&mut self, dir: u32, parent: u32) -> Result<()> {
        let start = self.cluster_offset(dir)?;
        let slots: Vec<[u8; ENTRY]> = (0..4)
            .map(|i| {
                let mut slot = [0u8; ENTRY];
                slot.copy_from_slice(&self.bytes[start + i * ENTRY..start + (i + 1) * ENTRY]);
                slot
            })
            .collect();
        let is_dot = |slot: &[u8; ENTRY], name: &[u8; 11]| {
            &slot[..11] == name && slot[11] & ATTR_DIRECTORY != 0
        };
        let (mut dot, mut dotdot) = if is_dot(&slots[0], DOT) && is_dot(&slots[1], DOTDOT) {
            (slots[0], slots[1])
        } else if slots[0][11] == ATTR_LONG_NAME
            && is_dot(&slots[1], DOT)
            && slots[2][11] == ATTR_LONG_NAME
            && is_dot(&slots[3], DOTDOT)
        {
            let (dot, dotdot) = (slots[1], slots[3]);
            for slot in 2..4 {
                let at = start + slot * ENTRY;
                self.bytes[at..at + ENTRY].fill(0);
                self.bytes[at] = DELETED;
            }
            (dot, dotdot)
        } else {
            bail!("directory at cluster {dir} does not start with '.' and '..' entries");
        };
        // `.` is the directory itself; `..` is its parent, 0 when that is the root.
        let parent = if parent == self.layout.root_cluster {
            0
        } else {
            parent
        };
        for (entry, cluster) in [(&mut dot, dir), (&mut dotdot, parent)] {
            entry[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
            entry[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
        }
        self.bytes[start..start + ENTRY].copy_from_slice(&dot);
        self.bytes[start + ENTRY..start + 2 * ENTRY].copy_from_slice(&dotdot);
        Ok(())
    }

    fn fix_tree(&mut self, dir: u32, depth: usize) -> Result<()> {
        ensure!(
            depth < MAX_DEPTH,
            "directories nested deeper than {MAX_DEPTH}"
        );
        for sub in self.subdirectories(dir)? {
            self.fix_dot_entries(sub, dir)?;
            self.fix_tree(sub, depth + 1)?;
        }
        Ok(())
    }

    /// Fix 3: free-cluster count and next-free hint in the FSInfo sector and its backup.
    fn fix_fsinfo(&mut self) -> Result<()> {
        let mut free = 0u32;
        let mut next_free = None;
        for cluster in 2..self.layout.cluster_count + 2 {
            if self.fat_entry(cluster) == 0 {
                free += 1;
                next_free.get_or_insert(cluster);
            }
        }
        let fsinfo = usize::from(le16(self.bytes, 48));
        let backup = usize::from(le16(self.bytes, 50));
        let mut sectors = vec![fsinfo];
        if backup != 0 && backup != 0xFFFF {
            sectors.push(backup + fsinfo);
        }
        for sector in sectors {
            let at = sector * BLOCK_SIZE;
            ensure!(
                at + BLOCK_SIZE <= self.bytes.len(),
                "FSInfo sector {sector} is outside the volume"
            );
            if le32(self.bytes, at) != FSINFO_LEAD || le32(self.bytes, at + 484) != FSINFO_STRUCT {
                // fatfs writes no backup FSInfo; only the primary must be there.
                ensure!(sector != fsinfo, "no FSInfo sector at {sector}");
                continue;
            }
            put32(self.bytes, at + 488, free);
            put32(self.bytes, at + 492, next_free.unwrap_or(0xFFFF_FFFF));
        }
        Ok(())
    }
}

/// Applies the three fixes to a FAT32 volume image (the whole partition's bytes).
pub fn fix_fatfs_volume(bytes: &mut [u8]) -> Result<()> {
    let mut boot = [0u8; BLOCK_SIZE];
    boot.copy_from_slice(
        bytes
            .get(..BLOCK_SIZE)
            .context("volume shorter than a sector")?,
    );
    let sectors = bytes.len() as u64 / BLOCK_SIZE as u64;
    let layout = FatVolume::parse::<()>(&boot, 0, Some(sectors))
        .map_err(|e| anyhow::anyhow!("boot partition: {e}"))?;
    ensure!(
        layout.fat_type == FatType::Fat32,
        "the boot partition is not FAT32"
    );
    let root = layout.root_cluster;
    let mut volume = Volume { bytes, layout };
    volume.fix_tree(root, 0)?;
    volume.fix_fsinfo()
}
