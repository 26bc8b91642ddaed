//! Files and block devices as [`BlockDevice`]s, and a byte window for `fatfs`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use recovery_proto::block::{BLOCK_SIZE, Block, BlockDevice};

/// A disk image, block device or state file addressed in 512-byte blocks. Every write is
/// followed by `fdatasync`, so a returned write is on the medium (the store's order relies on
/// it).
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    blocks: u64,
    writes: usize,
}

impl FileDisk {
    /// Wraps an open file; its size (regular file or block device) gives the block count.
    pub fn new(mut file: File) -> io::Result<Self> {
        let bytes = file.seek(SeekFrom::End(0))?;
        Ok(Self {
            file,
            blocks: bytes / BLOCK_SIZE as u64,
            writes: 0,
        })
    }

    /// Sectors written so far.
    pub fn writes(&self) -> usize {
        self.writes
    }

    /// The underlying file.
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    fn offset(&self, lba: u64) -> io::Result<u64> {
        if lba >= self.blocks {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("LBA {lba} is past the end ({} blocks)", self.blocks),
            ));
        }
        Ok(lba * BLOCK_SIZE as u64)
    }
}

impl BlockDevice for FileDisk {
    type Error = io::Error;

    fn read_block(&mut self, lba: u64, buffer: &mut Block) -> io::Result<()> {
        let offset = self.offset(lba)?;
        self.file.read_exact_at(buffer, offset)
    }

    fn write_block(&mut self, lba: u64, buffer: &Block) -> io::Result<()> {
        let offset = self.offset(lba)?;
        self.file.write_all_at(buffer, offset)?;
        self.file.sync_data()?;
        self.writes += 1;
        Ok(())
    }

    fn block_count(&self) -> u64 {
        self.blocks
    }
}

/// A byte window `[start, start + len)` of a file, for `fatfs` to see one partition.
#[derive(Debug)]
pub struct Window<'a> {
    file: &'a mut File,
    start: u64,
    len: u64,
    position: u64,
}

impl<'a> Window<'a> {
    /// A window over `len` bytes from `start`.
    pub fn new(file: &'a mut File, start: u64, len: u64) -> Self {
        Self {
            file,
            start,
            len,
            position: 0,
        }
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.position);
        let n = buffer
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let Some(buffer) = buffer.get_mut(..n) else {
            return Ok(0);
        };
        let read = self.file.read_at(buffer, self.start + self.position)?;
        self.position += read as u64;
        Ok(read)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.position);
        let n = buffer
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 && !buffer.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the partition end",
            ));
        }
        let Some(buffer) = buffer.get(..n) else {
            return Ok(0);
        };
        let written = self.file.write_at(buffer, self.start + self.position)?;
        self.position += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => i128::from(n),
            SeekFrom::End(n) => i128::from(self.len) + i128::from(n),
            SeekFrom::Current(n) => i128::from(self.position) + i128::from(n),
        };
        self.position = u64::try_from(target)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.position)
    }
}
