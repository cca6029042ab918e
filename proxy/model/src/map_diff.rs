//! Which keys of two object maps hold different entries, found in one side-by-side walk.
//!
//! Sources share unchanged objects between snapshots as the same `Arc`, so most entries are
//! told apart by pointer. Walking both maps in key order costs one key comparison per entry;
//! looking each key up in the other map would cost a tree search (a dozen string
//! comparisons at 10,000 services) per entry, on every change. A pair of entries that share
//! one object is passed over without comparing its keys at all: a source files an object
//! under the key its own metadata gives, so one object never stands under two keys, and the
//! string comparisons were most of a one-service change's model time at 10,000 services.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Keys present in only one of the maps, or whose entries `same` says differ, in key order.
/// Entries that `shared` says hold one object are equal and must stand under equal keys (see
/// the module): their keys are not compared.
pub(crate) fn differing_keys<'a, K: Ord, A, B>(
    left: &'a BTreeMap<K, A>,
    right: &'a BTreeMap<K, B>,
    shared: impl Fn(&A, &B) -> bool,
    same: impl Fn(&A, &B) -> bool,
) -> Vec<&'a K> {
    let mut differing = Vec::new();
    let mut left_iter = left.iter().peekable();
    let mut right_iter = right.iter().peekable();
    loop {
        if let (Some(&(left_key, a)), Some(&(right_key, b))) = (left_iter.peek(), right_iter.peek())
        {
            if shared(a, b) {
                debug_assert!(left_key == right_key, "one object under two keys");
                left_iter.next();
                right_iter.next();
                continue;
            }
        }
        match (left_iter.peek(), right_iter.peek()) {
            (None, None) => return differing,
            (Some(&(key, _)), None) => {
                differing.push(key);
                left_iter.next();
            }
            (None, Some(&(key, _))) => {
                differing.push(key);
                right_iter.next();
            }
            (Some(&(left_key, a)), Some(&(right_key, b))) => match left_key.cmp(right_key) {
                Ordering::Less => {
                    differing.push(left_key);
                    left_iter.next();
                }
                Ordering::Greater => {
                    differing.push(right_key);
                    right_iter.next();
                }
                Ordering::Equal => {
                    if !same(a, b) {
                        differing.push(left_key);
                    }
                    left_iter.next();
                    right_iter.next();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn added_removed_and_replaced_entries_are_found_and_shared_ones_are_not() {
        let same = Arc::new(1);
        let cached: BTreeMap<&str, Arc<i32>> = [
            ("kept", same.clone()),
            ("gone", Arc::new(2)),
            ("replaced", Arc::new(3)),
        ]
        .into_iter()
        .collect();
        let now: BTreeMap<&str, Arc<i32>> = [
            ("kept", same),
            ("new", Arc::new(4)),
            // Equal contents in a new Arc count as a change under pointer identity.
            ("replaced", Arc::new(3)),
        ]
        .into_iter()
        .collect();
        let changed = differing_keys(&now, &cached, Arc::ptr_eq, Arc::ptr_eq);
        assert_eq!(changed, vec![&"gone", &"new", &"replaced"]);
        // Compared by content, only presence differs.
        let changed = differing_keys(&now, &cached, Arc::ptr_eq, |a, b| a == b);
        assert_eq!(changed, vec![&"gone", &"new"]);
    }

    /// A key that counts how often it is compared.
    #[derive(PartialEq, Eq)]
    struct Counted(u32);

    thread_local! {
        static COMPARED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    impl PartialOrd for Counted {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }

    impl Ord for Counted {
        fn cmp(&self, other: &Self) -> Ordering {
            COMPARED.with(|c| c.set(c.get() + 1));
            self.0.cmp(&other.0)
        }
    }

    #[test]
    fn entries_sharing_their_object_are_passed_over_without_comparing_keys() {
        let objects: Vec<Arc<u32>> = (0..100).map(Arc::new).collect();
        let left: BTreeMap<Counted, Arc<u32>> = (0..100)
            .map(|i| (Counted(i), objects[i as usize].clone()))
            .collect();
        let mut right: BTreeMap<Counted, Arc<u32>> = (0..100)
            .map(|i| (Counted(i), objects[i as usize].clone()))
            .collect();
        right.insert(Counted(50), Arc::new(50));
        COMPARED.with(|c| c.set(0));
        let changed = differing_keys(&left, &right, Arc::ptr_eq, Arc::ptr_eq);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].0, 50);
        // Only the replaced entry's keys were compared (once under debug assertions too).
        assert!(
            COMPARED.with(|c| c.get()) <= 1,
            "{}",
            COMPARED.with(|c| c.get())
        );
    }

    #[test]
    fn a_map_against_an_empty_one_lists_every_key() {
        let full: BTreeMap<u8, ()> = [(1, ()), (2, ())].into_iter().collect();
        let empty: BTreeMap<u8, ()> = BTreeMap::new();
        assert_eq!(
            differing_keys(&full, &empty, |_, _| false, |_, _| true),
            vec![&1, &2]
        );
        assert_eq!(
            differing_keys(&empty, &full, |_, _| false, |_, _| true),
            vec![&1, &2]
        );
    }
}
