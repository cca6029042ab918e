//! Backend-set ids: handed out once, retired for a sync before they are handed out again.
use std::collections::BTreeSet;

/// The id allocator.
#[derive(Debug, Default)]
pub(super) struct Ids {
    free: BTreeSet<u32>,
    /// The highest id ever handed out (or skipped); ids above it are unused.
    next: u32,
    /// Ids found in the maps that this planner did not hand out (a previous instance's).
    reserved: BTreeSet<u32>,
    /// Ids retired in this sync: a program that read a service entry just before it changed
    /// may still look up their slots, so they are reusable from the next sync on.
    cooling: BTreeSet<u32>,
}

impl Ids {
    /// An id nothing uses, above `base` (the family's share of the id space).
    pub(super) fn allocate(&mut self, base: u32) -> u32 {
        // The first id of a family's planner; a fresh allocator starts at 0.
        self.next = self.next.max(base);
        while let Some(id) = self.free.pop_first() {
            if !self.reserved.contains(&id) {
                return id;
            }
        }
        loop {
            self.next += 1;
            if !self.reserved.contains(&self.next) {
                return self.next;
            }
        }
    }

    /// `id` is no longer used; free from the next sync on.
    pub(super) fn retire(&mut self, id: u32) {
        self.cooling.insert(id);
    }

    /// Keeps `id` (found in the maps) from being handed out until it is retired.
    pub(super) fn reserve(&mut self, id: u32) {
        self.reserved.insert(id);
    }

    /// Whether `id` waits for the next sync.
    pub(super) fn is_cooling(&self, id: u32) -> bool {
        self.cooling.contains(&id)
    }

    /// A new sync: the previous one's retired ids may be handed out again.
    pub(super) fn begin_sync(&mut self) {
        for id in std::mem::take(&mut self.cooling) {
            self.reserved.remove(&id);
            // Ids above `next` are handed out in turn anyway.
            if id <= self.next {
                self.free.insert(id);
            }
        }
    }
}
