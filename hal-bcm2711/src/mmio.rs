//! The single typed MMIO wrapper: a register block at a fixed address.
//!
//! Every driver in this crate reaches its registers through [`Mmio`]; nothing
//! else in the crate turns an integer into a reference. The one `unsafe` step
//! is [`Mmio::new`], whose contract makes the safe [`Deref`] sound — the same
//! split as Tock's `StaticRef` (`kernel/src/utilities/static_ref.rs`).

use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;

/// A register block of layout `T` (a `register_structs!` type) at a fixed
/// address.
///
/// Not `Clone`/`Copy`: a second handle to the same block is made only with a
/// second `unsafe` [`Mmio::new`], so every alias is visible at a call site.
/// The handle is `Send + Sync` (it is an address); register accesses are
/// volatile, and drivers document when a read-modify-write needs the
/// exclusivity promised at construction.
pub struct Mmio<T> {
    addr: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Mmio<T> {
    /// Wraps the register block at `addr`.
    ///
    /// # Safety
    ///
    /// - `addr` is the base of a device whose registers have layout `T`,
    ///   suitably aligned for `T`;
    /// - the range `addr..addr + size_of::<T>()` is mapped (identity-mapped as
    ///   Device memory, or reached with the MMU off) and stays valid for the
    ///   rest of the program;
    /// - the caller upholds any exclusivity the driver built on this handle
    ///   needs (e.g. no two cores doing read-modify-write on the same
    ///   register at once), as that driver's constructor documents.
    pub const unsafe fn new(addr: usize) -> Self {
        Self {
            addr,
            _t: PhantomData,
        }
    }

    /// The base address of the register block.
    pub const fn addr(&self) -> usize {
        self.addr
    }
}

impl<T> Deref for Mmio<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `Mmio::new`'s contract: `addr` is the aligned base of a
        // mapped block of layout `T`, valid for the program's life, so a
        // shared reference to it is valid for as long as `self` lives.
        // `T` is made of tock-registers cells (`UnsafeCell` + volatile
        // accesses), so hardware-side changes do not violate the reference.
        unsafe { &*(self.addr as *const T) }
    }
}

impl<T> fmt::Debug for Mmio<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mmio({:#x})", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::Mmio;
    use tock_registers::interfaces::{Readable, Writeable};
    use tock_registers::register_structs;
    use tock_registers::registers::ReadWrite;

    register_structs! {
        Block {
            (0x0 => first: ReadWrite<u32>),
            (0x4 => second: ReadWrite<u32>),
            (0x8 => @END),
        }
    }

    #[test]
    fn deref_reaches_the_block_at_the_address() {
        // A RAM-backed stand-in: the layout check is what is under test,
        // not a device.
        let mut backing = [0u32; 2];
        let addr = backing.as_mut_ptr() as usize;
        {
            // SAFETY: `backing` outlives `block`, is aligned for `Block` and
            // has its size; nothing else accesses it while `block` is used.
            let block: Mmio<Block> = unsafe { Mmio::new(addr) };
            block.second.set(0xdead_beef);
            assert_eq!(block.first.get(), 0);
            assert_eq!(block.second.get(), 0xdead_beef);
            assert_eq!(block.addr(), addr);
        }
        assert_eq!(backing[1], 0xdead_beef);
    }
}
