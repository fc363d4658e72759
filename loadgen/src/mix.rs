//! What happens to each booking after it is made: the admin approves, the admin denies, or the
//! owner cancels — in proportions given as `approve=80,deny=10,cancel=10`.
//!
//! The choice for saga `i` is deterministic (a low-discrepancy sequence over the cumulative
//! weights), so a run of any length matches the mix closely and the three paths are interleaved
//! rather than bunched, and two runs with the same mix do the same work.

use std::{fmt, str::FromStr};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `PATCH /confirms/{id} {"status":"CONFIRMED"}` → saga COMPLETED, booking CONFIRMED.
    Approve,
    /// `PATCH /confirms/{id} {"status":"DENIED"}` → saga COMPENSATED, booking CANCELLED.
    Deny,
    /// `DELETE /bookings/{id}` by the owner → saga CANCELLED, booking CANCELLED.
    Cancel,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Approve, Action::Deny, Action::Cancel];

    pub fn name(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Deny => "deny",
            Action::Cancel => "cancel",
        }
    }

    /// The settled saga state this path must end in.
    pub fn expected_saga_state(self) -> &'static str {
        match self {
            Action::Approve => "COMPLETED",
            Action::Deny => "COMPENSATED",
            Action::Cancel => "CANCELLED",
        }
    }

    pub fn expected_booking_status(self) -> &'static str {
        match self {
            Action::Approve => "CONFIRMED",
            Action::Deny | Action::Cancel => "CANCELLED",
        }
    }

    /// The confirm's final status, where the path decides it (a cancelled booking's confirm is
    /// closed, still BOOKED).
    pub fn expected_confirm_status(self) -> Option<&'static str> {
        match self {
            Action::Approve => Some("CONFIRMED"),
            Action::Deny => Some("DENIED"),
            Action::Cancel => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Weights in `Action::ALL` order; at least one is positive.
    weights: [u32; 3],
}

impl Mix {
    pub fn new(approve: u32, deny: u32, cancel: u32) -> Result<Self, String> {
        let weights = [approve, deny, cancel];
        if weights.iter().all(|w| *w == 0) {
            return Err("the mix needs at least one positive weight".into());
        }
        if weights.iter().map(|w| u64::from(*w)).sum::<u64>() > 1_000_000 {
            return Err("mix weights are too large (keep their sum under 1,000,000)".into());
        }
        Ok(Mix { weights })
    }

    pub fn weight(&self, action: Action) -> u32 {
        self.weights[action as usize]
    }

    fn total(&self) -> u32 {
        self.weights.iter().sum()
    }

    /// The action for saga number `i`.
    pub fn pick(&self, i: u64) -> Action {
        // Fractional parts of i·φ⁻¹ are spread evenly over [0, 1) for every prefix of i.
        const INV_PHI: f64 = 0.618_033_988_749_894_9;
        let u = (i as f64 * INV_PHI).fract();
        let target = u * f64::from(self.total());
        let mut cumulative = 0.0;
        for action in Action::ALL {
            cumulative += f64::from(self.weight(action));
            if target < cumulative {
                return action;
            }
        }
        // Rounding at the very top: the last action with a weight.
        *Action::ALL
            .iter()
            .rev()
            .find(|a| self.weight(**a) > 0)
            .expect("a mix has a positive weight")
    }
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            weights: [80, 10, 10],
        }
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `approve=80,deny=10,cancel=10`; `:` works as well as `=`, missing actions weigh 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut weights = [0u32; 3];
        let mut seen = [false; 3];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once(['=', ':'])
                .ok_or_else(|| format!("`{part}`: expected action=weight"))?;
            let action = match name.trim().to_ascii_lowercase().as_str() {
                "approve" | "confirm" => Action::Approve,
                "deny" => Action::Deny,
                "cancel" => Action::Cancel,
                other => {
                    return Err(format!(
                        "unknown action `{other}` (use approve, deny, cancel)"
                    ))
                }
            };
            let weight: u32 = value
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
            if seen[action as usize] {
                return Err(format!("`{}` given twice", action.name()));
            }
            seen[action as usize] = true;
            weights[action as usize] = weight;
        }
        Mix::new(weights[0], weights[1], weights[2])
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "approve={},deny={},cancel={}",
            self.weights[0], self.weights[1], self.weights[2]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(mix: &Mix, n: u64) -> [u64; 3] {
        let mut c = [0u64; 3];
        for i in 0..n {
            c[mix.pick(i) as usize] += 1;
        }
        c
    }

    #[test]
    fn the_mix_is_parsed_from_action_weight_pairs() {
        let mix: Mix = "approve=80, deny=15,cancel:5".parse().unwrap();
        assert_eq!(mix, Mix::new(80, 15, 5).unwrap());
        assert_eq!(mix.to_string(), "approve=80,deny=15,cancel=5");
        let only: Mix = "approve=1".parse().unwrap();
        assert_eq!(only, Mix::new(1, 0, 0).unwrap());
    }

    #[test]
    fn a_bad_mix_is_rejected_with_a_reason() {
        for bad in [
            "",
            "approve=0",
            "approve",
            "reject=5",
            "approve=x",
            "deny=1,deny=2",
        ] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn picks_follow_the_weights_closely_for_every_run_length() {
        let mix = Mix::new(80, 10, 10).unwrap();
        for n in [100u64, 1_000, 12_345, 100_000] {
            let c = counts(&mix, n);
            let expect = [n * 80 / 100, n * 10 / 100, n * 10 / 100];
            for k in 0..3 {
                let diff = c[k].abs_diff(expect[k]);
                // Low discrepancy: off by a handful, not by a percentage of n.
                assert!(diff <= 3, "n={n} counts={c:?} expected={expect:?}");
            }
        }
    }

    #[test]
    fn paths_are_interleaved_not_bunched() {
        let mix = Mix::new(50, 0, 50).unwrap();
        let picks: Vec<Action> = (0..20).map(|i| mix.pick(i)).collect();
        let longest_run = picks
            .chunk_by(|a, b| a == b)
            .map(|run| run.len())
            .max()
            .unwrap();
        assert!(longest_run <= 3, "{picks:?}");
    }

    #[test]
    fn a_zero_weight_action_is_never_picked() {
        let mix = Mix::new(3, 0, 1).unwrap();
        assert_eq!(counts(&mix, 10_000)[Action::Deny as usize], 0);
        let single = Mix::new(0, 0, 7).unwrap();
        assert!((0..1000).all(|i| single.pick(i) == Action::Cancel));
    }

    #[test]
    fn each_path_has_its_settled_outcome() {
        assert_eq!(Action::Approve.expected_saga_state(), "COMPLETED");
        assert_eq!(Action::Deny.expected_saga_state(), "COMPENSATED");
        assert_eq!(Action::Cancel.expected_saga_state(), "CANCELLED");
        assert_eq!(Action::Deny.expected_booking_status(), "CANCELLED");
        assert_eq!(Action::Cancel.expected_confirm_status(), None);
    }
}
