//! The waiting room of one clinic: who waits, in what order, and how long they may expect.

use serde::{Deserialize, Serialize};

use super::model::{AppointmentId, InvitationId, Millis, UserId};

/// How the waiting room is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueOrder {
    /// By booked slot, then by arrival (the usual follow-up clinic).
    #[default]
    SlotThenArrival,
    /// By arrival only (walk-in style).
    Arrival,
}

/// One waiting patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The appointment.
    pub appointment: AppointmentId,
    /// The patient.
    pub patient: UserId,
    /// Booked slot start.
    pub slot_start: Millis,
    /// Check-in time.
    pub arrived: Millis,
    /// Tie-breaker: order of check-in.
    pub arrival_seq: u64,
    /// Set when the doctor moved the patient up; higher = moved later = further ahead.
    pub promoted: Option<u64>,
    /// The outstanding invitation, if the patient is being called.
    pub invited: Option<InvitationId>,
    /// Lost connection at this time; the place is kept for the grace period.
    pub disconnected_since: Option<Millis>,
}

/// The queue itself. Small (a clinic session has dozens of patients), so it is sorted on read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingRoom {
    entries: Vec<QueueEntry>,
    order: QueueOrder,
    next_seq: u64,
}

impl WaitingRoom {
    /// An empty room.
    pub fn new(order: QueueOrder) -> WaitingRoom {
        WaitingRoom {
            entries: Vec::new(),
            order,
            next_seq: 0,
        }
    }

    /// Add a patient; `false` if already waiting (a reconnect keeps the old place).
    pub fn add(
        &mut self,
        now: Millis,
        appointment: AppointmentId,
        patient: UserId,
        slot_start: Millis,
    ) -> bool {
        if let Some(e) = self.entries.iter_mut().find(|e| e.patient == patient) {
            e.disconnected_since = None;
            return false;
        }
        self.next_seq += 1;
        self.entries.push(QueueEntry {
            appointment,
            patient,
            slot_start,
            arrived: now,
            arrival_seq: self.next_seq,
            promoted: None,
            invited: None,
            disconnected_since: None,
        });
        true
    }

    /// Take a patient out of the queue.
    pub fn remove(&mut self, patient: &UserId) -> Option<QueueEntry> {
        let pos = self.entries.iter().position(|e| &e.patient == patient)?;
        Some(self.entries.remove(pos))
    }

    /// The entry of `patient`.
    pub fn get_mut(&mut self, patient: &UserId) -> Option<&mut QueueEntry> {
        self.entries.iter_mut().find(|e| &e.patient == patient)
    }

    /// The entry of `patient`.
    pub fn get(&self, patient: &UserId) -> Option<&QueueEntry> {
        self.entries.iter().find(|e| &e.patient == patient)
    }

    /// Entries in queue order.
    pub fn ordered(&self) -> Vec<&QueueEntry> {
        let mut v: Vec<&QueueEntry> = self.entries.iter().collect();
        let order = self.order;
        v.sort_by_key(|e| {
            let promoted = std::cmp::Reverse(e.promoted.unwrap_or(0));
            let slot = match order {
                QueueOrder::SlotThenArrival => e.slot_start.0,
                QueueOrder::Arrival => 0,
            };
            (promoted, slot, e.arrival_seq)
        });
        v
    }

    /// 1-based place of `patient` among those not currently being called.
    pub fn position(&self, patient: &UserId) -> Option<usize> {
        self.ordered()
            .into_iter()
            .filter(|e| e.invited.is_none())
            .position(|e| &e.patient == patient)
            .map(|p| p + 1)
    }

    /// The first patient who can be called now (not being called, connected).
    pub fn next_callable(&self) -> Option<&QueueEntry> {
        self.ordered()
            .into_iter()
            .find(|e| e.invited.is_none() && e.disconnected_since.is_none())
    }

    /// Move `patient` to the front.
    pub fn promote(&mut self, patient: &UserId) -> bool {
        self.next_seq += 1;
        let seq = self.next_seq;
        match self.get_mut(patient) {
            Some(e) => {
                e.promoted = Some(seq);
                true
            }
            None => false,
        }
    }

    /// Remove every entry disconnected since before `cutoff`; returns them.
    pub fn expire_disconnected(&mut self, cutoff: Millis) -> Vec<QueueEntry> {
        let (gone, kept) = self
            .entries
            .drain(..)
            .partition(|e| e.disconnected_since.is_some_and(|t| t <= cutoff));
        self.entries = kept;
        gone
    }

    /// Earliest disconnect time among entries (for the grace timer).
    pub fn earliest_disconnect(&self) -> Option<Millis> {
        self.entries
            .iter()
            .filter_map(|e| e.disconnected_since)
            .min()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nobody waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Expected wait for the patient at `position` (1 = next), given the average length of recent
/// consultations and how long the current one (if any) has run.
pub fn estimate_wait_ms(position: usize, average_ms: u64, current_elapsed_ms: Option<u64>) -> u64 {
    let current_left = current_elapsed_ms.map_or(0, |e| average_ms.saturating_sub(e));
    current_left + average_ms * (position.saturating_sub(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(room: &mut WaitingRoom, now: u64, who: &str, slot: u64) {
        room.add(
            Millis(now),
            AppointmentId(format!("a-{who}")),
            who.into(),
            Millis(slot),
        );
    }

    #[test]
    fn slot_then_arrival_order() {
        let mut room = WaitingRoom::new(QueueOrder::SlotThenArrival);
        add(&mut room, 10, "late-slot-early-arrival", 2_000);
        add(&mut room, 20, "early-slot", 1_000);
        add(&mut room, 30, "early-slot-later", 1_000);
        let order: Vec<_> = room.ordered().iter().map(|e| e.patient.0.clone()).collect();
        assert_eq!(
            order,
            ["early-slot", "early-slot-later", "late-slot-early-arrival"]
        );
        assert_eq!(room.position(&"early-slot-later".into()), Some(2));
    }

    #[test]
    fn arrival_order_and_promotion() {
        let mut room = WaitingRoom::new(QueueOrder::Arrival);
        add(&mut room, 10, "a", 3_000);
        add(&mut room, 20, "b", 1_000);
        add(&mut room, 30, "c", 2_000);
        assert_eq!(room.position(&"b".into()), Some(2));
        assert!(room.promote(&"c".into()));
        assert_eq!(room.position(&"c".into()), Some(1));
        assert_eq!(room.position(&"a".into()), Some(2));
    }

    #[test]
    fn readding_keeps_the_place() {
        let mut room = WaitingRoom::new(QueueOrder::Arrival);
        add(&mut room, 10, "a", 0);
        add(&mut room, 20, "b", 0);
        room.get_mut(&"a".into()).unwrap().disconnected_since = Some(Millis(25));
        assert!(!room.add(Millis(30), "a-a".into(), "a".into(), Millis(0)));
        assert_eq!(room.position(&"a".into()), Some(1));
        assert_eq!(room.get(&"a".into()).unwrap().disconnected_since, None);
    }

    #[test]
    fn wait_estimate() {
        assert_eq!(estimate_wait_ms(1, 600_000, None), 0);
        assert_eq!(estimate_wait_ms(1, 600_000, Some(200_000)), 400_000);
        assert_eq!(estimate_wait_ms(3, 600_000, Some(700_000)), 1_200_000);
    }
}
