//! Which entries of a source's object map differ from what the cache last read.
//!
//! Sources share their objects as `Arc`s and replace the `Arc` when an object changes, so
//! an unchanged entry is recognised by pointer, without looking inside it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Keys present in only one of the maps, or whose object is not the one `held` returns for
/// the cached entry. Both maps are walked once, side by side, in key order.
pub(super) fn changed_keys<K: Ord + Clone, V, C>(
    now: &BTreeMap<K, Arc<V>>,
    cached: &BTreeMap<K, C>,
    held: impl Fn(&C) -> &Arc<V>,
) -> Vec<K> {
    let mut changed = Vec::new();
    let mut now_iter = now.iter().peekable();
    let mut cached_iter = cached.iter().peekable();
    loop {
        match (now_iter.peek(), cached_iter.peek()) {
            (None, None) => return changed,
            (Some((key, _)), None) => {
                changed.push((*key).clone());
                now_iter.next();
            }
            (None, Some((key, _))) => {
                changed.push((*key).clone());
                cached_iter.next();
            }
            (Some((now_key, object)), Some((cached_key, entry))) => match now_key.cmp(cached_key) {
                Ordering::Less => {
                    changed.push((*now_key).clone());
                    now_iter.next();
                }
                Ordering::Greater => {
                    changed.push((*cached_key).clone());
                    cached_iter.next();
                }
                Ordering::Equal => {
                    if !Arc::ptr_eq(object, held(entry)) {
                        changed.push((*now_key).clone());
                    }
                    now_iter.next();
                    cached_iter.next();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
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
            // Equal contents in a new Arc count as a change: the source replaced it.
            ("replaced", Arc::new(3)),
        ]
        .into_iter()
        .collect();
        let changed = changed_keys(&now, &cached, |c| c);
        assert_eq!(changed, vec!["gone", "new", "replaced"]);
    }
}
