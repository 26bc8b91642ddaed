//! Fuzzes everything a USB stick (and the hubs before it) can send the loader: device,
//! configuration and hub descriptors, hub port status, the SCSI answers (INQUIRY, READ
//! CAPACITY, REQUEST SENSE data) and every CSW. A hostile device answers each transfer
//! with bytes (and an outcome) taken from the input; enumeration, the mass-storage
//! bring-up and a few block reads must end in an error or data, never panic or hang.
#![no_main]

use core::time::Duration;

use hal_bcm2711::usb::mass_storage::find_first_mass_storage;
use hal_bcm2711::usb::{
    BulkPipe, ControlData, Endpoint, HostController, HostTimer, SetupPacket, Speed, TransferError,
};
use libfuzzer_sys::fuzz_target;

/// A device whose every answer is the next bytes of the fuzz input.
struct Hostile<'a> {
    input: &'a [u8],
    now: u64,
    transfers: u32,
}

impl Hostile<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.input.split_first()?;
        self.input = rest;
        Some(first)
    }

    /// The transfer's outcome: mostly success, sometimes each error the controller has.
    fn outcome(&mut self) -> Result<(), TransferError> {
        self.transfers += 1;
        // A bound on the work per input: a dead device after this many transfers.
        if self.transfers > 400 {
            return Err(TransferError::Timeout);
        }
        match self.byte().ok_or(TransferError::TransactionError)? {
            0xf0 => Err(TransferError::Stall),
            0xf1 => Err(TransferError::Babble),
            0xf2 => Err(TransferError::TransactionError),
            0xf3 => Err(TransferError::DataToggleError),
            0xf4 => Err(TransferError::NakTimeout),
            0xf5 => Err(TransferError::Timeout),
            0xf6 => Err(TransferError::DeviceGone),
            _ => Ok(()),
        }
    }

    /// Fills up to `buffer.len()` bytes (as many as the next length byte says).
    fn fill(&mut self, buffer: &mut [u8]) -> usize {
        let wanted = match self.byte() {
            Some(0xff) | None => buffer.len(),
            Some(length) => usize::from(length).min(buffer.len()),
        };
        let take = wanted.min(self.input.len());
        let (data, rest) = self.input.split_at(take);
        buffer[..take].copy_from_slice(data);
        self.input = rest;
        take
    }
}

impl HostController for Hostile<'_> {
    fn control_transfer(
        &mut self,
        _endpoint: &Endpoint,
        _setup: &SetupPacket,
        data: ControlData<'_>,
    ) -> Result<usize, TransferError> {
        self.outcome()?;
        Ok(match data {
            ControlData::In(buffer) => self.fill(buffer),
            ControlData::Out(bytes) => bytes.len(),
            ControlData::None => 0,
        })
    }

    fn bulk_in(&mut self, _pipe: &mut BulkPipe, buffer: &mut [u8]) -> Result<usize, TransferError> {
        self.outcome()?;
        Ok(self.fill(buffer))
    }

    fn bulk_out(&mut self, _pipe: &mut BulkPipe, _data: &[u8]) -> Result<(), TransferError> {
        self.outcome()
    }

    fn delay(&mut self, duration: Duration) {
        self.now += duration.as_micros() as u64;
    }

    fn start_timer(&mut self, timeout: Duration) -> HostTimer {
        HostTimer {
            expires: self.now + timeout.as_micros() as u64,
        }
    }

    fn expired(&mut self, timer: &HostTimer) -> bool {
        // Every look at a deadline costs a millisecond of simulated time.
        self.now += 1000;
        self.now >= timer.expires
    }
}

fuzz_target!(|data: &[u8]| {
    let (speed, input) = match data.split_first() {
        Some((0, rest)) => (Speed::Full, rest),
        Some((1, rest)) => (Speed::Low, rest),
        Some((_, rest)) => (Speed::High, rest),
        None => return,
    };
    let host = Hostile {
        input,
        now: 0,
        transfers: 0,
    };
    let Ok(mut stick) = find_first_mass_storage(host, speed) else {
        return;
    };
    let _ = stick.block_count();
    let mut buffer = vec![0u8; 4096];
    for lba in [0u64, 1, 63] {
        if stick.read_blocks(lba, &mut buffer).is_err() {
            break;
        }
    }
});
