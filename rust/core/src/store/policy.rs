//! Eviction policies: which slot a missing expert replaces.
//!
//! Layers are visited in the same order every token, so one LRU over all experts evicts exactly
//! the expert that the next token needs first, and gets no hits once the budget is below the
//! working set. Per-layer LRU gives each layer a share of the slots and evicts within the layer.

use super::ExpertId;

/// The part of a slot's state that a policy may see.
#[derive(Clone, Copy, Debug)]
pub struct SlotView {
    /// The expert in the slot, or `None` when it is empty.
    pub expert: Option<ExpertId>,
    /// False while the slot is in use or being read: such a slot must not be chosen.
    pub evictable: bool,
    /// Logical time of the slot's last use; larger is more recent.
    pub last_used: u64,
}

/// Chooses victims for the slot pool.
pub trait EvictionPolicy: Send {
    /// Returns the policy's name, for stats.
    fn name(&self) -> &'static str;

    /// Picks an evictable slot for `incoming`, or `None` when no slot may be evicted.
    fn choose_victim(&mut self, incoming: ExpertId, slots: &[SlotView]) -> Option<usize>;
}

/// Least recently used among all evictable slots.
pub struct GlobalLru;

impl EvictionPolicy for GlobalLru {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn choose_victim(&mut self, _incoming: ExpertId, slots: &[SlotView]) -> Option<usize> {
        least_recent(slots, |_| true)
    }
}

/// LRU within layers: each layer has a quota of slots (an equal share, at least one). A layer at
/// or over its quota evicts its own least recent expert. A layer under its quota takes a slot
/// from the layer most over its quota, and failing that, the least recent slot anywhere.
pub struct PerLayerLru {
    quota: usize,
    n_layer: usize,
}

impl PerLayerLru {
    /// Creates a policy for `n_slots` slots shared by `n_layer` layers.
    pub fn new(n_slots: usize, n_layer: usize) -> Self {
        PerLayerLru { quota: (n_slots / n_layer.max(1)).max(1), n_layer }
    }
}

impl EvictionPolicy for PerLayerLru {
    fn name(&self) -> &'static str {
        "per-layer-lru"
    }

    fn choose_victim(&mut self, incoming: ExpertId, slots: &[SlotView]) -> Option<usize> {
        let mut slots_per_layer = vec![0usize; self.n_layer];
        for view in slots {
            if let Some(id) = view.expert {
                slots_per_layer[id.layer] += 1;
            }
        }

        let layer = incoming.layer;
        if slots_per_layer[layer] >= self.quota {
            if let Some(victim) = least_recent(slots, |id| id.layer == layer) {
                return Some(victim);
            }
        }
        // The layers over their quota, most over first, that still have an evictable slot.
        let mut over: Vec<usize> = (0..self.n_layer).filter(|&l| slots_per_layer[l] > self.quota).collect();
        over.sort_by_key(|&l| std::cmp::Reverse(slots_per_layer[l]));
        for donor in over {
            if let Some(victim) = least_recent(slots, |id| id.layer == donor) {
                return Some(victim);
            }
        }
        least_recent(slots, |_| true)
    }
}

/// Returns the evictable slot with the oldest use among those whose expert satisfies `filter`.
fn least_recent(slots: &[SlotView], filter: impl Fn(ExpertId) -> bool) -> Option<usize> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, view)| view.evictable && view.expert.is_some_and(&filter))
        .min_by_key(|(_, view)| view.last_used)
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(layer: usize, expert: usize, last_used: u64) -> SlotView {
        SlotView { expert: Some(ExpertId { layer, expert }), evictable: true, last_used }
    }

    #[test]
    fn per_layer_lru_evicts_own_layer_at_quota() {
        let slots = [view(0, 0, 1), view(0, 1, 5), view(1, 0, 0), view(1, 1, 2)];
        let mut policy = PerLayerLru::new(4, 2);
        assert_eq!(policy.choose_victim(ExpertId { layer: 0, expert: 2 }, &slots), Some(0));
    }

    #[test]
    fn per_layer_lru_takes_from_layer_over_quota() {
        let slots = [view(0, 0, 9), view(0, 1, 8), view(0, 2, 7), view(1, 0, 0)];
        let mut policy = PerLayerLru::new(4, 2);
        assert_eq!(policy.choose_victim(ExpertId { layer: 1, expert: 1 }, &slots), Some(2));
    }

    #[test]
    fn policies_skip_pinned_slots() {
        let mut slots = [view(0, 0, 0), view(0, 1, 1)];
        slots[0].evictable = false;
        assert_eq!(GlobalLru.choose_victim(ExpertId { layer: 0, expert: 2 }, &slots), Some(1));
        slots[1].evictable = false;
        assert_eq!(PerLayerLru::new(2, 1).choose_victim(ExpertId { layer: 0, expert: 2 }, &slots), None);
    }
}
