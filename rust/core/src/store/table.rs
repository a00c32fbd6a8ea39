//! The slot table: which expert each slot holds, its read status, its pins and when it was last
//! used, and the rules that give a slot to a demand read or a prefetch.
//!
//! The table does no I/O and takes no locks. The streaming store drives it under its mutex and
//! starts the reads it requests; the replay of a routing trace drives the same table without
//! reading anything, so both make the same choices.

use std::collections::HashMap;

use super::policy::{EvictionPolicy, SlotView};
use super::ExpertId;

/// The read status of a slot.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Empty,
    Loading,
    Ready,
    Failed(String),
}

/// One slot of the pool.
#[derive(Clone, Debug)]
pub struct Slot {
    /// The expert in the slot or being read into it. `None` when empty, or when a cancelled
    /// prefetch is still finishing its reads.
    pub expert: Option<ExpertId>,
    pub status: Status,
    /// Requests using the slot now; a pinned slot is never evicted.
    pub pins: u32,
    /// Logical time of the last request or prefetch; larger is more recent.
    pub last_used: u64,
    /// True from a prefetch until the first demand request for the expert.
    pub prefetched: bool,
}

/// The outcome of a demand request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Demand {
    /// The expert is read and now pinned.
    Hit(usize),
    /// The expert is being read (by an earlier request or a prefetch) and now pinned: wait.
    Pending(usize),
    /// The slot now belongs to the expert, pinned and Loading: start a demand read.
    Read(usize),
    /// Every slot is pinned or loading: wait for one to be released, then ask again.
    Full,
}

/// The expert a slot held before it was given to another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evicted {
    pub expert: ExpertId,
    /// The expert had been prefetched and never used.
    pub unused_prefetch: bool,
}

/// What a demand request found, beyond its outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DemandNotes {
    /// The expert was there (read or being read) because of a prefetch.
    pub prefetch_used: bool,
    pub evicted: Option<Evicted>,
}

/// The slots, the map from expert to slot, the logical clock and the eviction policy.
pub struct SlotTable {
    pub slots: Vec<Slot>,
    resident: HashMap<ExpertId, usize>,
    clock: u64,
    policy: Box<dyn EvictionPolicy>,
}

impl SlotTable {
    /// Creates `n_slots` empty slots.
    pub fn new(n_slots: usize, policy: Box<dyn EvictionPolicy>) -> Self {
        let empty = Slot { expert: None, status: Status::Empty, pins: 0, last_used: 0, prefetched: false };
        SlotTable { slots: vec![empty; n_slots], resident: HashMap::new(), clock: 0, policy }
    }

    /// Returns the eviction policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Returns the slot holding or reading `id`.
    pub fn find(&self, id: ExpertId) -> Option<usize> {
        self.resident.get(&id).copied()
    }

    /// Requests `id` for the forward pass and pins its slot, unless every slot is busy.
    pub fn request(&mut self, id: ExpertId) -> (Demand, DemandNotes) {
        self.clock += 1;
        let now = self.clock;
        let mut notes = DemandNotes::default();
        if let Some(index) = self.find(id) {
            let slot = &mut self.slots[index];
            slot.pins += 1;
            slot.last_used = now;
            notes.prefetch_used = std::mem::take(&mut slot.prefetched);
            let demand = if slot.status == Status::Ready { Demand::Hit(index) } else { Demand::Pending(index) };
            return (demand, notes);
        }

        let Some(index) = self.free_slot().or_else(|| self.victim(id, |_| true)) else {
            // Undo the tick, so that waiting and asking again counts once.
            self.clock -= 1;
            return (Demand::Full, notes);
        };
        notes.evicted = self.assign(index, id, now, 1);
        (Demand::Read(index), notes)
    }

    /// Gives a slot to `id` for a prefetch, unpinned and Loading, and returns it with what it
    /// evicted. Returns `None` when `id` is already there, or when the only slots left are the
    /// last free one (kept for demand reads), pinned or loading ones, or unused prefetches.
    ///
    /// An expert that is already there counts as used now, so that the prefetches after it,
    /// for the same layer, evict other experts rather than the ones the predictor expects.
    pub fn prefetch(&mut self, id: ExpertId) -> Option<(usize, Option<Evicted>)> {
        if let Some(index) = self.find(id) {
            self.clock += 1;
            self.slots[index].last_used = self.clock;
            return None;
        }
        let free: Vec<usize> = self.free_slots().take(2).collect();
        let index = if free.len() == 2 { free[0] } else { self.victim(id, |slot| !slot.prefetched)? };
        self.clock += 1;
        let evicted = self.assign(index, id, self.clock, 0);
        self.slots[index].prefetched = true;
        Some((index, evicted))
    }

    /// Records the end of the read into `index`: Ready, or Failed with `error`. A slot no request
    /// waits for empties at once on failure, and so does a cancelled prefetch.
    pub fn finish(&mut self, index: usize, result: Result<(), String>) {
        let slot = &mut self.slots[index];
        slot.status = match result {
            Ok(()) => Status::Ready,
            Err(message) => Status::Failed(message),
        };
        if slot.expert.is_none() || (slot.pins == 0 && slot.status != Status::Ready) {
            self.clear(index);
        }
    }

    /// Forgets the prefetch reading into `index`: the expert is no longer found there, and the
    /// slot empties when its read finishes. Returns false, and changes nothing, when the slot is
    /// pinned, ready or not a prefetch.
    pub fn cancel(&mut self, index: usize) -> bool {
        let slot = &mut self.slots[index];
        if slot.pins > 0 || slot.status != Status::Loading || !slot.prefetched {
            return false;
        }
        if let Some(id) = slot.expert.take() {
            self.resident.remove(&id);
        }
        slot.prefetched = false;
        true
    }

    /// Forgets which slots hold prefetches not used yet, so that counts started afresh do not
    /// include uses of earlier prefetches.
    pub fn forget_prefetches(&mut self) {
        for slot in &mut self.slots {
            slot.prefetched = false;
        }
    }

    /// Releases one pin of `index`. A failed slot empties when its last pin goes.
    pub fn unpin(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.pins -= 1;
        if slot.pins == 0 && matches!(slot.status, Status::Failed(_)) {
            self.clear(index);
        }
    }

    /// Returns the slots that are empty and not finishing a read, in index order.
    fn free_slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.expert.is_none() && s.pins == 0 && s.status != Status::Loading)
            .map(|(index, _)| index)
    }

    fn free_slot(&self) -> Option<usize> {
        self.free_slots().next()
    }

    /// Asks the policy for a victim among the ready, unpinned slots that `allow` accepts.
    fn victim(&mut self, incoming: ExpertId, allow: impl Fn(&Slot) -> bool) -> Option<usize> {
        let views: Vec<SlotView> = self
            .slots
            .iter()
            .map(|s| SlotView {
                expert: s.expert,
                evictable: s.pins == 0 && s.status == Status::Ready && allow(s),
                last_used: s.last_used,
            })
            .collect();
        self.policy.choose_victim(incoming, &views)
    }

    /// Gives slot `index` to `id`, Loading with `pins` pins, and returns what it held.
    fn assign(&mut self, index: usize, id: ExpertId, now: u64, pins: u32) -> Option<Evicted> {
        let old = &self.slots[index];
        let evicted = old.expert.map(|expert| Evicted { expert, unused_prefetch: old.prefetched });
        if let Some(old) = evicted {
            self.resident.remove(&old.expert);
            log::trace!("evicting expert {} of layer {} from slot {index}", old.expert.expert, old.expert.layer);
        }
        self.slots[index] = Slot { expert: Some(id), status: Status::Loading, pins, last_used: now, prefetched: false };
        self.resident.insert(id, index);
        evicted
    }

    fn clear(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if let Some(id) = slot.expert.take() {
            self.resident.remove(&id);
        }
        slot.status = Status::Empty;
        slot.prefetched = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::policy::PerLayerLru;

    fn id(layer: usize, expert: usize) -> ExpertId {
        ExpertId { layer, expert }
    }

    fn table(n_slots: usize) -> SlotTable {
        SlotTable::new(n_slots, Box::new(PerLayerLru::new(n_slots, 2)))
    }

    #[test]
    fn prefetch_keeps_the_last_free_slot() {
        let mut t = table(2);
        assert!(t.prefetch(id(0, 0)).is_some());
        assert_eq!(t.prefetch(id(0, 1)), None);
        assert!(matches!(t.request(id(0, 1)).0, Demand::Read(1)));
    }

    #[test]
    fn prefetch_never_evicts_pinned_or_unused_prefetches() {
        let mut t = table(3);
        let (Demand::Read(a), _) = t.request(id(0, 0)) else { panic!() };
        t.finish(a, Ok(()));
        let (index, _) = t.prefetch(id(1, 0)).unwrap();
        t.finish(index, Ok(()));
        // Slot 2 is the last free one, slot 0 is pinned and slot 1 an unused prefetch.
        assert_eq!(t.prefetch(id(1, 1)), None);
        t.unpin(a);
        let (index, evicted) = t.prefetch(id(1, 1)).unwrap();
        assert_eq!(index, a);
        assert_eq!(evicted, Some(Evicted { expert: id(0, 0), unused_prefetch: false }));
    }

    #[test]
    fn demand_on_a_prefetch_counts_it_used_once() {
        let mut t = table(3);
        let (index, _) = t.prefetch(id(0, 2)).unwrap();
        let (demand, notes) = t.request(id(0, 2));
        assert_eq!(demand, Demand::Pending(index));
        assert!(notes.prefetch_used);
        t.finish(index, Ok(()));
        t.unpin(index);
        let (demand, notes) = t.request(id(0, 2));
        assert_eq!(demand, Demand::Hit(index));
        assert!(!notes.prefetch_used);
    }

    #[test]
    fn cancelled_prefetch_empties_when_its_read_ends() {
        let mut t = table(3);
        let (index, _) = t.prefetch(id(0, 1)).unwrap();
        assert!(t.cancel(index));
        assert_eq!(t.find(id(0, 1)), None);
        // The slot is still being written, so a demand read takes another one.
        assert_eq!(t.request(id(0, 1)).0, Demand::Read(1));
        t.finish(index, Ok(()));
        assert_eq!(t.slots[index].status, Status::Empty);
    }

    #[test]
    fn prefetch_of_a_resident_expert_protects_it() {
        let mut t = SlotTable::new(4, Box::new(crate::store::policy::GlobalLru));
        for expert in 0..3 {
            let (Demand::Read(index), _) = t.request(id(0, expert)) else { panic!() };
            t.finish(index, Ok(()));
            t.unpin(index);
        }
        // Expert 0 is the least recent, but the predictor expects it again.
        assert_eq!(t.prefetch(id(0, 0)), None);
        t.request(id(0, 3));
        let (_, evicted) = t.prefetch(id(0, 4)).unwrap();
        assert_eq!(evicted.map(|e| e.expert), Some(id(0, 1)));
    }

    #[test]
    fn pinned_prefetch_cannot_be_cancelled() {
        let mut t = table(3);
        let (index, _) = t.prefetch(id(0, 1)).unwrap();
        t.request(id(0, 1));
        assert!(!t.cancel(index));
    }

    #[test]
    fn failed_read_with_waiter_empties_on_unpin() {
        let mut t = table(2);
        let (Demand::Read(index), _) = t.request(id(0, 0)) else { panic!() };
        t.finish(index, Err("bad".into()));
        assert!(matches!(t.slots[index].status, Status::Failed(_)));
        t.unpin(index);
        assert_eq!(t.slots[index].status, Status::Empty);
        assert_eq!(t.find(id(0, 0)), None);
    }

    #[test]
    fn full_table_reports_full() {
        let mut t = table(1);
        let (Demand::Read(index), _) = t.request(id(0, 0)) else { panic!() };
        assert_eq!(t.request(id(0, 1)).0, Demand::Full);
        t.finish(index, Ok(()));
        t.unpin(index);
        assert_eq!(t.request(id(0, 1)).0, Demand::Read(index));
    }
}
