//! Work-request ids: slot index plus generation, never a pointer.

/// A work request id: low 32 bits = slot index, high 32 bits = slot generation.
///
/// The generation changes every time a slot is freed, so a late (stale) completion for an
/// earlier use of the slot is recognised and ignored instead of being delivered to the
/// current owner.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WrId(u64);

impl WrId {
    /// From slot index and generation.
    pub const fn new(index: u32, generation: u32) -> Self {
        Self(((generation as u64) << 32) | index as u64)
    }

    /// From the raw `wr_id` of a work request / completion.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value to put in `ibv_send_wr::wr_id` / `ibv_recv_wr::wr_id`.
    pub const fn into_raw(self) -> u64 {
        self.0
    }

    /// Slot index.
    pub const fn index(self) -> u32 {
        self.0 as u32
    }

    /// Slot generation.
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

impl From<WrId> for u64 {
    fn from(id: WrId) -> u64 {
        id.into_raw()
    }
}

#[cfg(test)]
mod tests {
    use super::WrId;

    #[test]
    fn packs_index_and_generation() {
        let id = WrId::new(7, 0xdead_beef);
        assert_eq!(id.index(), 7);
        assert_eq!(id.generation(), 0xdead_beef);
        assert_eq!(WrId::from_raw(id.into_raw()), id);
        assert_eq!(id.into_raw(), 0xdead_beef_0000_0007);
    }
}
