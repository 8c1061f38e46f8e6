//! Where an agent stands on one label: the one rule behind the fleet view,
//! its summary counts, the fleet metrics and `promote --wait`.

/// One agent's state for one label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Connected, and the version it last applied is the label's target.
    InSync,
    /// Connected, and it has not applied the target (yet, or it rejected it).
    Stale,
    /// No open stream, whatever it applied last.
    Disconnected,
}

impl AgentState {
    pub const ALL: [AgentState; 3] = [
        AgentState::InSync,
        AgentState::Stale,
        AgentState::Disconnected,
    ];

    /// The state of an agent that is `connected` (or not) and is
    /// [`in_sync`] (or not).
    pub fn of(connected: bool, in_sync: bool) -> AgentState {
        match (connected, in_sync) {
            (false, _) => AgentState::Disconnected,
            (true, true) => AgentState::InSync,
            (true, false) => AgentState::Stale,
        }
    }

    /// The name in metrics labels and JSON: `in_sync`, `stale`, `disconnected`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::InSync => "in_sync",
            AgentState::Stale => "stale",
            AgentState::Disconnected => "disconnected",
        }
    }
}

/// An agent is in sync when the version it last applied is the label's
/// current target; a label with no target has no agent in sync.
pub fn in_sync(applied: Option<u64>, target: Option<u64>) -> bool {
    target.is_some() && applied == target
}

/// Agents per state for one label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub in_sync: u32,
    pub stale: u32,
    pub disconnected: u32,
}

impl FleetCounts {
    pub fn add(&mut self, state: AgentState) {
        *self.count_mut(state) += 1;
    }

    pub fn count(&self, state: AgentState) -> u32 {
        match state {
            AgentState::InSync => self.in_sync,
            AgentState::Stale => self.stale,
            AgentState::Disconnected => self.disconnected,
        }
    }

    fn count_mut(&mut self, state: AgentState) -> &mut u32 {
        match state {
            AgentState::InSync => &mut self.in_sync,
            AgentState::Stale => &mut self.stale,
            AgentState::Disconnected => &mut self.disconnected,
        }
    }
}

impl FromIterator<AgentState> for FleetCounts {
    fn from_iter<I: IntoIterator<Item = AgentState>>(states: I) -> FleetCounts {
        let mut counts = FleetCounts::default();
        for state in states {
            counts.add(state);
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disconnected_agent_counts_as_disconnected_even_in_sync() {
        assert_eq!(AgentState::of(false, true), AgentState::Disconnected);
        assert_eq!(AgentState::of(true, true), AgentState::InSync);
        assert_eq!(AgentState::of(true, false), AgentState::Stale);
    }

    #[test]
    fn no_target_means_nobody_is_in_sync() {
        assert!(!in_sync(None, None));
        assert!(!in_sync(Some(3), None));
        assert!(!in_sync(Some(2), Some(3)));
        assert!(in_sync(Some(3), Some(3)));
    }

    #[test]
    fn counts_add_up_by_state() {
        let counts: FleetCounts = [AgentState::Stale, AgentState::InSync, AgentState::Stale]
            .into_iter()
            .collect();
        assert_eq!(
            counts,
            FleetCounts {
                in_sync: 1,
                stale: 2,
                disconnected: 0
            }
        );
        assert_eq!(counts.count(AgentState::Stale), 2);
    }
}
