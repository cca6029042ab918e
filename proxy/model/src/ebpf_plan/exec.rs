//! Running a plan: each operation through the [`MapWriter`], the mirror updated only for what
//! the maps accepted, a failed port restored, and what nothing uses any more collected.
use std::collections::{BTreeMap, BTreeSet};

use std::net::IpAddr;

use switchyard_common::SERVICE_FLAG_SOURCE_RANGES;

use super::{
    Doomed, Family, FamilyOp as MapOp, FamilyPlanner, FrontendConflict, MapWriter, Phase, Plan,
    PortFailure, PortState, Ranged, Step, Target,
};
use crate::ServicePortKey;

/// What running a plan did.
#[derive(Debug)]
pub struct SyncOutcome<E: std::error::Error + 'static> {
    /// Ports whose change is complete.
    pub written: Vec<ServicePortKey>,
    /// Ports whose change failed, with the first error; they keep their previous state for
    /// every frontend they still want.
    pub failed: Vec<(ServicePortKey, PortFailure<E>)>,
    /// Errors of restoring a failed port or of removing leftovers; the planner's memory
    /// reflects them, so they need no retry of their own.
    pub housekeeping: Vec<E>,
}

impl<E: std::error::Error + 'static> Default for SyncOutcome<E> {
    fn default() -> Self {
        Self {
            written: Vec::new(),
            failed: Vec::new(),
            housekeeping: Vec::new(),
        }
    }
}

/// How an assign step ended, for what the port is recorded to hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    Done,
    /// Failed; `restored` tells whether everything it overwrote was put back.
    Failed {
        restored: bool,
    },
}

impl<F: Family> FamilyPlanner<F> {
    /// Starts a sync: deletes what the previous sync left for later (slots and source ranges
    /// nothing covers), then lets the ids retired then be handed out again. A delete that
    /// fails is tried again next time; its error is returned for the log.
    pub fn begin_sync<W: MapWriter<F>>(&mut self, writer: &mut W) -> Vec<W::Error> {
        let mut errors = Vec::new();
        let doomed: Vec<Doomed<F>> = std::mem::take(&mut self.doomed).into_iter().collect();
        let ops: Vec<MapOp<F>> = doomed.iter().map(|d| d.op()).collect();
        run_each(writer, &ops, |i, result| match result {
            Ok(()) => self.maps.apply(&ops[i]),
            Err(e) => {
                errors.push(e);
                self.doomed.insert(doomed[i]);
            }
        });
        self.ids.begin_sync();
        errors
    }

    /// Runs `plan` (from [`Planner::plan_sync`]) one operation at a time.
    pub fn run<W: MapWriter<F>>(&mut self, plan: Plan<F>, writer: &mut W) -> SyncOutcome<W::Error> {
        let mut outcome = SyncOutcome::default();
        let mut failed: BTreeSet<ServicePortKey> = BTreeSet::new();
        for step in &plan.steps {
            match step.phase {
                Phase::Release => {
                    if let Err(e) = self.release(step, writer) {
                        failed.insert(step.port.clone());
                        outcome
                            .failed
                            .push((step.port.clone(), PortFailure::Map(e)));
                    }
                }
                Phase::Assign if failed.contains(&step.port) => {
                    // Nothing written; the new ids it got go back.
                    self.finish(
                        &step.port,
                        step.target.as_ref(),
                        Finish::Failed { restored: true },
                    );
                }
                Phase::Assign => match self.assign(step, writer, &mut outcome.housekeeping) {
                    Ok(()) => outcome.written.push(step.port.clone()),
                    Err(failure) => outcome.failed.push((step.port.clone(), failure)),
                },
            }
        }
        self.collect(plan.collect_garbage, writer, &mut outcome.housekeeping);
        for port in &outcome.written {
            self.unsettled.remove(port);
        }
        self.unsettled
            .extend(outcome.failed.iter().map(|(port, _)| port.clone()));
        outcome
    }

    /// Phase one of a port: deletes the service entries it no longer wants.
    fn release<W: MapWriter<F>>(&mut self, step: &Step<F>, writer: &mut W) -> Result<(), W::Error> {
        let (done, result) = writer.run_all(&step.ops);
        for op in step.ops.iter().take(done) {
            self.maps.apply(op);
            if let MapOp::DeleteService(key) = op {
                if self.owners.get(key) == Some(&step.port) {
                    self.owners.remove(key);
                }
                if let Some(state) = self.ports.get_mut(&step.port) {
                    state.frontends.remove(key);
                }
            }
        }
        result
    }

    /// Phase two of a port. On failure everything it overwrote is put back, service entries
    /// first (so none counts a slot being restored), then slots.
    fn assign<W: MapWriter<F>>(
        &mut self,
        step: &Step<F>,
        writer: &mut W,
        housekeeping: &mut Vec<W::Error>,
    ) -> Result<(), PortFailure<W::Error>> {
        if let Some(t) = &step.target {
            let held = t.frontends.keys().find_map(|k| {
                self.owners
                    .get(k)
                    .filter(|owner| **owner != step.port)
                    .map(|owner| FrontendConflict::new::<F>(k, owner))
            });
            if let Some(conflict) = held {
                self.finish(&step.port, Some(t), Finish::Failed { restored: true });
                return Err(PortFailure::Conflict(conflict));
            }
        }
        let mut undo = Vec::new();
        let (done, result) = writer.run_all(&step.ops);
        // The mirror follows the maps op by op, so each undo is taken before its op applies.
        for op in step.ops.iter().take(done) {
            undo.extend(self.maps.undo(op));
            self.maps.apply(op);
        }
        let Err(error) = result else {
            self.finish(&step.port, step.target.as_ref(), Finish::Done);
            return Ok(());
        };
        let (slots, services): (Vec<MapOp<F>>, Vec<MapOp<F>>) = undo
            .into_iter()
            .rev()
            .partition(|op| matches!(op, MapOp::PutBackend(..)));
        let mut restored = true;
        let restore: Vec<MapOp<F>> = services.into_iter().chain(slots).collect();
        run_each(writer, &restore, |i, result| match result {
            Ok(()) => self.maps.apply(&restore[i]),
            Err(e) => {
                restored = false;
                housekeeping.push(e);
            }
        });
        self.finish(
            &step.port,
            step.target.as_ref(),
            Finish::Failed { restored },
        );
        Err(PortFailure::Map(error))
    }

    /// Records what `port` holds now, from the mirror: the service entries of its old or
    /// new state that are in the maps (a previous instance's entry it wanted but could not
    /// replace included: it keeps serving until the port succeeds), the sets they use, and
    /// slots beyond what they count (or of sets nothing uses) marked for deletion.
    fn finish(&mut self, port: &ServicePortKey, target: Option<&Target<F>>, finish: Finish) {
        let old = self.ports.remove(port).unwrap_or_default();
        let none = Target::default();
        let t = target.unwrap_or(&none);
        let mut state = PortState::default();
        for key in old.frontends.iter().chain(t.frontends.keys()) {
            let ours = self.owners.get(key).is_none_or(|owner| owner == port);
            if ours && self.maps.services.contains_key(key) {
                state.frontends.insert(*key);
                self.owners.insert(*key, port.clone());
            } else if self.owners.get(key) == Some(port) {
                self.owners.remove(key);
            }
        }
        let mut counted: BTreeMap<u32, u32> = BTreeMap::new();
        for key in &state.frontends {
            if let Some(value) = self.maps.services.get(key) {
                let count = counted.entry(value.id).or_default();
                *count = (*count).max(u32::from(value.count));
            }
        }
        let mut sets = old.sets.clone();
        sets.extend(t.sets.iter().map(|(kind, (id, _))| (*kind, *id)));
        for (kind, id) in sets {
            match counted.get(&id) {
                Some(count) => {
                    state.sets.insert(kind, id);
                    self.doom_slots(id, *count);
                }
                None => {
                    self.doom_slots(id, 0);
                    self.ids.retire(id);
                }
            }
        }
        state.ranges = match finish {
            Finish::Done => t.ranges.clone(),
            Finish::Failed { restored: true } => old.ranges,
            // Some new entry may still rely on the new ranges: keep both.
            Finish::Failed { restored: false } => old.ranges.union(&t.ranges).copied().collect(),
        };
        if !state.frontends.is_empty() {
            self.ports.insert(port.clone(), state);
        }
    }

    /// Marks the slots of set `id` from `first` on for deletion at the next sync.
    fn doom_slots(&mut self, id: u32, first: u32) {
        let slots: Vec<Doomed<F>> = self
            .maps
            .slots_from(id, first)
            .map(|(k, _)| Doomed::Backend(*k))
            .collect();
        self.doomed.extend(slots);
    }

    /// After the steps: service entries no port owns go at once when the plan covered every
    /// port (deleting a service entry is always safe: a program that read it still finds its
    /// slots, which go one sync later); foreign sets nothing uses and source ranges nobody
    /// wants are marked for deletion at the next sync.
    fn collect<W: MapWriter<F>>(
        &mut self,
        full: bool,
        writer: &mut W,
        housekeeping: &mut Vec<W::Error>,
    ) {
        if full {
            let stale: Vec<MapOp<F>> = self
                .maps
                .services
                .keys()
                .filter(|k| !self.owners.contains_key(k))
                .map(|key| MapOp::DeleteService(*key))
                .collect();
            run_each(writer, &stale, |i, result| match result {
                Ok(()) => self.maps.apply(&stale[i]),
                Err(e) => housekeeping.push(e),
            });
        }
        if !self.foreign_ids.is_empty() {
            let used: BTreeSet<u32> = self.maps.services.values().map(|v| v.id).collect();
            let unused: Vec<u32> = self
                .foreign_ids
                .iter()
                .filter(|id| !used.contains(id))
                .copied()
                .collect();
            for id in unused {
                self.doom_slots(id, 0);
                self.foreign_ids.remove(&id);
                self.ids.retire(id);
            }
        }
        self.collect_ranges();
    }

    /// Marks source ranges for deletion that no port wants and no foreign service entry
    /// with source ranges relies on.
    fn collect_ranges(&mut self) {
        let claimed: BTreeSet<Ranged<F>> = self
            .ports
            .values()
            .flat_map(|p| p.ranges.iter().copied())
            .collect();
        let foreign_lbs: BTreeSet<IpAddr> = if self.foreign_ranges.is_empty() {
            BTreeSet::new()
        } else {
            self.maps
                .services
                .iter()
                .filter(|(_, v)| {
                    v.flags & SERVICE_FLAG_SOURCE_RANGES != 0 && self.foreign_ids.contains(&v.id)
                })
                .map(|(k, _)| F::parts(k).0)
                .collect()
        };
        self.foreign_ranges
            .retain(|r| foreign_lbs.contains(&F::range_lb(&r.0)));
        let unwanted: Vec<Doomed<F>> = self
            .maps
            .ranges
            .iter()
            .filter(|r| !claimed.contains(r) && !self.foreign_ranges.contains(r))
            .map(|r| Doomed::Range(*r))
            .collect();
        self.doomed.extend(unwanted);
    }
}

/// Runs every operation of `ops` in order, going on past failures; `visit` gets each one's
/// index and outcome, in order.
fn run_each<F: Family, W: MapWriter<F>>(
    writer: &mut W,
    ops: &[MapOp<F>],
    mut visit: impl FnMut(usize, Result<(), W::Error>),
) {
    let mut start = 0;
    while start < ops.len() {
        let (done, result) = writer.run_all(&ops[start..]);
        let done = done.min(ops.len() - start);
        for i in start..start + done {
            visit(i, Ok(()));
        }
        start += done;
        match result {
            Ok(()) => break,
            Err(e) if start < ops.len() => {
                visit(start, Err(e));
                start += 1;
            }
            // A writer that failed after claiming every op done: nothing left to blame.
            Err(_) => break,
        }
    }
}
