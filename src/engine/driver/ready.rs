//! The ready set: nodes whose predecessors are done, in dispatch order, with O(1) membership
//! and removal (a wide plan must not cost a scan of every ready node per step).

use std::collections::VecDeque;

use foldhash::{HashSet, HashSetExt};

/// Ready nodes in dispatch order. A removed node stays in the queue as a stale entry until it
/// reaches the front, where it is skipped; `members` is what is really ready.
#[derive(Debug, Default)]
pub(super) struct ReadySet {
    order: VecDeque<String>,
    members: HashSet<String>,
}

impl ReadySet {
    pub(super) fn new() -> Self {
        Self {
            order: VecDeque::new(),
            members: HashSet::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    /// Adds `id` last, unless it is ready already.
    pub(super) fn push_back(&mut self, id: &str) {
        if self.members.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
        }
    }

    /// Adds `id` first (a retry goes before what became ready meanwhile), unless it is ready
    /// already.
    pub(super) fn push_front(&mut self, id: &str) {
        if self.members.insert(id.to_owned()) {
            self.order.push_front(id.to_owned());
        }
    }

    /// The next ready node, skipping removed ones.
    pub(super) fn pop_front(&mut self) -> Option<String> {
        while let Some(id) = self.order.pop_front() {
            if self.members.remove(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Takes `id` out of the set (it started some other way).
    pub(super) fn remove(&mut self, id: &str) {
        if self.members.remove(id) && self.members.is_empty() {
            self.order.clear();
        }
    }

    pub(super) fn clear(&mut self) {
        self.order.clear();
        self.members.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::ReadySet;

    #[test]
    fn keeps_order_membership_and_skips_removed_nodes() {
        let mut ready = ReadySet::new();
        for id in ["a", "b", "c", "b"] {
            ready.push_back(id);
        }
        assert_eq!(ready.len(), 3);
        ready.remove("b");
        assert_eq!(ready.len(), 2);
        ready.push_front("d");
        ready.push_back("b");
        let order: Vec<String> = std::iter::from_fn(|| ready.pop_front()).collect();
        // `b` was removed and re-added: it is dispatched once.
        assert_eq!(order, ["d", "a", "b", "c"]);
        assert_eq!(ready.len(), 0);
        assert_eq!(ready.pop_front(), None);
    }
}
