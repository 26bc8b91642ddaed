//! The verified payload kept in RAM between the reflash's two passes, so each byte is read
//! from the stick and hashed once.
//!
//! The verify pass reads the payload from its start in order (chunks are stored in region
//! order, which the reader checks). [`PayloadCache`] wraps the stick: while the verify pass
//! reads, it copies what it reads into the cache, for as long as the cache has room. The
//! write pass then finds those bytes in RAM: a chunk whose stored bytes lie wholly in the
//! filled part of the cache was checked against the (signed) chunk table when it was read,
//! and RAM does not change under the loader, so it is inflated from RAM and written without
//! reading the stick again or hashing it again ([`PayloadCache::holds`]). A chunk beyond the
//! cache is read from the stick again and checked against its digest again, as every chunk
//! was before this cache: a stick that changes between the passes is caught either way. The
//! argument is in `docs/recovery.md` ("Each byte hashed once").

use crate::image::ImageSource;

/// How much the cache reads from the stick at once while it fills: large reads cost the
/// stick fewer commands than the inflater's 16 KiB pieces.
pub const READ_AHEAD: usize = 256 * 1024;

/// An [`ImageSource`] that keeps a prefix of the image's payload in `buffer`.
#[derive(Debug)]
pub struct PayloadCache<'c, S> {
    source: &'c mut S,
    buffer: &'c mut [u8],
    /// File offset of the payload's first byte.
    base: u64,
    /// Payload bytes in the file (the cache never reads past them).
    payload: u64,
    /// Payload bytes held, from `base`.
    filled: usize,
    /// Whether the cache still takes bytes (it stops at the first read it cannot keep, so
    /// what it holds is always one prefix).
    filling: bool,
}

impl<'c, S: ImageSource> PayloadCache<'c, S> {
    /// A cache of the payload at file offset `base`, `payload` bytes long, in `buffer`.
    pub fn new(source: &'c mut S, buffer: &'c mut [u8], base: u64, payload: u64) -> Self {
        Self {
            source,
            buffer,
            base,
            payload,
            filled: 0,
            filling: true,
        }
    }

    /// Stops filling: reads from here on go to the stick unless already held.
    pub fn stop_filling(&mut self) {
        self.filling = false;
    }

    /// Payload bytes held (from the payload's start).
    pub fn held(&self) -> u64 {
        self.filled as u64
    }

    /// Whether `length` bytes at file offset `at` are all held.
    pub fn holds(&self, at: u64, length: u64) -> bool {
        at >= self.base
            && at
                .checked_add(length)
                .is_some_and(|end| end <= self.base + self.filled as u64)
    }

    /// Reads ahead from the end of what is held until `[at, at + length)` is held, when
    /// that range starts inside or right after the held prefix and fits. Returns whether it
    /// is held now.
    fn fill_to(&mut self, at: u64, length: usize) -> Result<bool, S::Error> {
        let end = self.base + self.filled as u64;
        if !self.filling || at < self.base || at > end {
            return Ok(false);
        }
        let Some(needed) = usize::try_from(at - self.base)
            .ok()
            .and_then(|from| from.checked_add(length))
        else {
            return Ok(false);
        };
        if needed as u64 > self.payload {
            // Past the payload (the signature trailer): not kept, and no reason to stop.
            return Ok(false);
        }
        if needed > self.buffer.len() {
            // The cache is full: the prefix ends here.
            self.filling = false;
            return Ok(false);
        }
        while self.filled < needed {
            let room = self.buffer.len() - self.filled;
            let left = usize::try_from(self.payload - self.filled as u64).unwrap_or(usize::MAX);
            let take = READ_AHEAD.max(needed - self.filled).min(room).min(left);
            let Some(target) = self.buffer.get_mut(self.filled..self.filled + take) else {
                return Ok(false);
            };
            self.source
                .read_exact_at(self.base + self.filled as u64, target)?;
            self.filled += take;
        }
        Ok(true)
    }
}

impl<S: ImageSource> ImageSource for PayloadCache<'_, S> {
    type Error = S::Error;

    fn size(&mut self) -> Result<u64, S::Error> {
        self.source.size()
    }

    fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), S::Error> {
        let length = buffer.len() as u64;
        if !self.holds(offset, length) && !self.fill_to(offset, buffer.len())? {
            return self.source.read_exact_at(offset, buffer);
        }
        let from = usize::try_from(offset - self.base).unwrap_or(usize::MAX);
        match self.buffer.get(from..from.saturating_add(buffer.len())) {
            Some(held) => {
                buffer.copy_from_slice(held);
                Ok(())
            }
            None => self.source.read_exact_at(offset, buffer),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// A source that counts the bytes it is asked for.
    struct Counting<'a> {
        bytes: &'a [u8],
        read: u64,
    }

    impl ImageSource for Counting<'_> {
        type Error = ();
        fn size(&mut self) -> Result<u64, ()> {
            Ok(self.bytes.len() as u64)
        }
        fn read_exact_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), ()> {
            let start = usize::try_from(offset).map_err(|_| ())?;
            buffer.copy_from_slice(self.bytes.get(start..start + buffer.len()).ok_or(())?);
            self.read += buffer.len() as u64;
            Ok(())
        }
    }

    fn file() -> Vec<u8> {
        (0..2_000_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_payload_that_fits_is_read_from_the_stick_once() {
        let bytes = file();
        let mut stick = Counting {
            bytes: &bytes,
            read: 0,
        };
        let mut memory = vec![0u8; 1 << 21];
        let (base, payload) = (1000u64, 1_900_000u64);
        let mut cache = PayloadCache::new(&mut stick, &mut memory, base, payload);
        let mut piece = [0u8; 16 * 1024];
        let mut at = base;
        while at < base + payload {
            let take = (base + payload - at).min(piece.len() as u64) as usize;
            cache.read_exact_at(at, &mut piece[..take]).unwrap();
            assert_eq!(&piece[..take], &bytes[at as usize..at as usize + take]);
            at += take as u64;
        }
        assert_eq!(cache.held(), payload);
        assert!(cache.holds(base, payload));
        assert!(!cache.holds(base - 1, 2), "the header is not payload");
        // The second pass: everything from RAM.
        let mut again = vec![0u8; 300_000];
        cache.read_exact_at(base + 12_345, &mut again).unwrap();
        assert_eq!(again, &bytes[1000 + 12_345..1000 + 12_345 + 300_000]);
        assert_eq!(stick.read, payload, "every payload byte read once");
    }

    #[test]
    fn a_payload_larger_than_the_cache_keeps_a_prefix_and_reads_the_rest() {
        let bytes = file();
        let mut stick = Counting {
            bytes: &bytes,
            read: 0,
        };
        let mut memory = vec![0u8; 600_000];
        let (base, payload) = (0u64, 1_500_000u64);
        let mut cache = PayloadCache::new(&mut stick, &mut memory, base, payload);
        let mut piece = vec![0u8; 100_000];
        for index in 0..15u64 {
            cache.read_exact_at(index * 100_000, &mut piece).unwrap();
            let at = (index * 100_000) as usize;
            assert_eq!(piece, &bytes[at..at + 100_000], "piece {index}");
        }
        let held = cache.held();
        assert!((500_000..=600_000).contains(&held), "{held}");
        assert!(cache.holds(0, held));
        assert!(!cache.holds(0, held + 1));
        // A second pass over the held prefix costs no stick read; the rest does.
        let read_once = stick.read;
        let mut cache = PayloadCache::new(&mut stick, &mut memory, base, payload);
        cache.stop_filling();
        cache.read_exact_at(0, &mut piece).unwrap();
        assert_eq!(
            stick.read,
            read_once + 100_000,
            "a stopped cache reads through"
        );
    }

    #[test]
    fn reads_out_of_order_go_to_the_stick() {
        let bytes = file();
        let mut stick = Counting {
            bytes: &bytes,
            read: 0,
        };
        let mut memory = vec![0u8; 1 << 20];
        let mut cache = PayloadCache::new(&mut stick, &mut memory, 0, 1_000_000);
        let mut piece = [0u8; 10];
        cache.read_exact_at(300_000, &mut piece).unwrap();
        assert_eq!(piece, bytes[300_000..300_010]);
        assert_eq!(
            cache.held(),
            0,
            "not at the end of the prefix: nothing kept"
        );
        cache.read_exact_at(0, &mut piece).unwrap();
        assert_eq!(cache.held(), READ_AHEAD as u64);
        // A read across the end of the prefix extends it.
        let mut across = vec![0u8; 20_000];
        cache
            .read_exact_at(READ_AHEAD as u64 - 10_000, &mut across)
            .unwrap();
        assert_eq!(across, &bytes[READ_AHEAD - 10_000..READ_AHEAD + 10_000]);
        assert_eq!(cache.held(), 2 * READ_AHEAD as u64);
        let mut past = [0u8; 4];
        cache.read_exact_at(1_000_000, &mut past).unwrap();
        assert_eq!(
            past,
            bytes[1_000_000..1_000_004],
            "past the payload: the trailer"
        );
    }
}
