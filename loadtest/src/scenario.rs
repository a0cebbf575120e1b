//! The scenarios, named after what hospitals do: who is in which room, who publishes, who
//! receives whom.

use clap::ValueEnum;
use serde::Serialize;

/// A kind of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioKind {
    /// Many 1:1 follow-up visits: doctor and patient each publish audio + video and receive
    /// the other. One unit = one visit (2 participants).
    Followup,
    /// Expert panels: rooms of `room_size` where everyone publishes and receives all others.
    /// One unit = one room.
    Panel,
    /// Teaching: one publisher, `observers` receive-only participants. One unit = one room.
    Teaching,
}

/// One simulated participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantSpec {
    /// Index in the run (also the publisher id inside the payloads).
    pub index: u32,
    /// The unit (visit or room) it belongs to.
    pub unit: u32,
    /// Publishes audio and video.
    pub publishes: bool,
    /// Publishers (by index) it receives.
    pub receives: Vec<u32>,
}

/// A scenario's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Scenario {
    /// Which.
    pub kind: ScenarioKind,
    /// Participants per panel room.
    pub room_size: u32,
    /// Observers per teaching room.
    pub observers: u32,
}

impl Scenario {
    /// Participants per unit.
    pub fn unit_size(&self) -> u32 {
        match self.kind {
            ScenarioKind::Followup => 2,
            ScenarioKind::Panel => self.room_size,
            ScenarioKind::Teaching => 1 + self.observers,
        }
    }

    /// Subscribed tracks per unit (audio and video count separately).
    pub fn subscribed_tracks_per_unit(&self) -> u32 {
        self.participants(0, 0)
            .iter()
            .map(|p| p.receives.len() as u32 * 2)
            .sum()
    }

    /// The participants of unit `unit`, numbered from `first_index`.
    pub fn participants(&self, unit: u32, first_index: u32) -> Vec<ParticipantSpec> {
        let size = self.unit_size();
        let indices: Vec<u32> = (first_index..first_index + size).collect();
        let publishers: Vec<u32> = match self.kind {
            ScenarioKind::Teaching => vec![first_index],
            _ => indices.clone(),
        };
        indices
            .iter()
            .map(|&index| ParticipantSpec {
                index,
                unit,
                publishes: publishers.contains(&index),
                receives: publishers.iter().copied().filter(|&p| p != index).collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(kind: ScenarioKind) -> Scenario {
        Scenario {
            kind,
            room_size: 6,
            observers: 20,
        }
    }

    #[test]
    fn followup_is_two_who_see_each_other() {
        let p = scenario(ScenarioKind::Followup).participants(3, 10);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].receives, vec![11]);
        assert_eq!(p[1].receives, vec![10]);
        assert!(p.iter().all(|x| x.publishes && x.unit == 3));
        assert_eq!(
            scenario(ScenarioKind::Followup).subscribed_tracks_per_unit(),
            4
        );
    }

    #[test]
    fn panel_members_receive_the_five_others() {
        let s = scenario(ScenarioKind::Panel);
        let p = s.participants(0, 0);
        assert_eq!(p.len(), 6);
        assert!(p
            .iter()
            .all(|x| x.publishes && x.receives.len() == 5 && !x.receives.contains(&x.index)));
        assert_eq!(s.subscribed_tracks_per_unit(), 60);
    }

    #[test]
    fn teaching_has_one_publisher_and_receive_only_observers() {
        let s = scenario(ScenarioKind::Teaching);
        let p = s.participants(1, 100);
        assert_eq!(p.len(), 21);
        assert!(p[0].publishes && p[0].receives.is_empty());
        assert!(p[1..]
            .iter()
            .all(|x| !x.publishes && x.receives == vec![100]));
        assert_eq!(s.subscribed_tracks_per_unit(), 40);
    }
}
