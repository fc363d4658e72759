//! One circuit breaker per upstream service (the `failsafe` crate's state machine), so a
//! service that keeps failing is answered for at once instead of being waited on by every call.
//!
//! - **Closed**: calls go through; `failures` consecutive failures (unreachable, timed out, or a
//!   5xx answer) open the circuit.
//! - **Open**: for `open_for`, the service's routes answer 503 `circuit-open` with
//!   `Retry-After` without calling it; other services' routes are unaffected.
//! - **Half-open**: once `open_for` has passed, calls go through again as probes: the first
//!   success closes the circuit, a failure opens it for another `open_for`.
//!
//! A call whose caller went away before it finished counts as neither.

use std::{collections::BTreeMap, time::Duration};

use failsafe::{
    backoff::{self, Constant},
    failure_policy::{consecutive_failures, ConsecutiveFailures},
    Instrument, StateMachine,
};

use crate::config::{BreakerConfig, Service};

type Machine = StateMachine<ConsecutiveFailures<Constant>, Transitions>;

/// The breakers of every service, fixed at start-up.
pub struct Breakers {
    breakers: BTreeMap<Service, Machine>,
    open_for: Duration,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        let breakers = Service::ALL
            .into_iter()
            .map(|service| {
                let policy =
                    consecutive_failures(config.failures, backoff::constant(config.open_for));
                let machine = failsafe::Config::new()
                    .failure_policy(policy)
                    .instrument(Transitions { service })
                    .build();
                (service, machine)
            })
            .collect();
        Breakers {
            breakers,
            open_for: config.open_for,
        }
    }

    /// Whether `service` may be called now; `false` while its circuit is open.
    pub fn permits(&self, service: Service) -> bool {
        self.machine(service).is_call_permitted()
    }

    /// Records how a permitted call ended.
    pub fn record(&self, service: Service, succeeded: bool) {
        let machine = self.machine(service);
        if succeeded {
            machine.on_success();
        } else {
            machine.on_error();
        }
    }

    /// The whole seconds a refused caller is told to wait: at least the rest of the open time.
    pub fn retry_after_secs(&self) -> u64 {
        self.open_for.as_millis().div_ceil(1000).max(1) as u64
    }

    fn machine(&self, service: Service) -> &Machine {
        // Every service gets a breaker in `new`.
        &self.breakers[&service]
    }
}

/// Logs and measures each breaker's transitions.
struct Transitions {
    service: Service,
}

impl Transitions {
    fn state(&self, open: f64) {
        metrics::gauge!("gateway_upstream_circuit_open", "upstream" => self.service.name())
            .set(open);
    }
}

impl Instrument for Transitions {
    fn on_call_rejected(&self) {
        metrics::counter!("gateway_upstream_calls_refused_total", "upstream" => self.service.name())
            .increment(1);
    }

    fn on_open(&self) {
        tracing::warn!(
            upstream = self.service.name(),
            "circuit opened: the upstream keeps failing; its routes answer 503 for a while"
        );
        self.state(1.0);
    }

    fn on_half_open(&self) {
        tracing::info!(
            upstream = self.service.name(),
            "circuit half-open: probing the upstream"
        );
    }

    fn on_closed(&self) {
        self.state(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(failures: u32) -> Breakers {
        Breakers::new(BreakerConfig {
            failures,
            // Long enough that it cannot pass while the test runs.
            open_for: Duration::from_secs(3600),
        })
    }

    #[test]
    fn consecutive_failures_open_only_that_services_circuit() {
        let b = breakers(3);
        for _ in 0..2 {
            assert!(b.permits(Service::Confirm));
            b.record(Service::Confirm, false);
        }
        assert!(b.permits(Service::Confirm), "two failures leave it closed");
        b.record(Service::Confirm, false);
        assert!(!b.permits(Service::Confirm));
        assert!(b.permits(Service::Booking));
    }

    #[test]
    fn a_success_in_between_restarts_the_count() {
        let b = breakers(2);
        b.record(Service::Booking, false);
        b.record(Service::Booking, true);
        b.record(Service::Booking, false);
        assert!(b.permits(Service::Booking));
    }

    #[test]
    fn retry_after_rounds_the_open_time_up_to_whole_seconds() {
        let b = Breakers::new(BreakerConfig {
            failures: 1,
            open_for: Duration::from_millis(1500),
        });
        assert_eq!(b.retry_after_secs(), 2);
        let short = Breakers::new(BreakerConfig {
            failures: 1,
            open_for: Duration::from_millis(10),
        });
        assert_eq!(short.retry_after_secs(), 1);
    }
}
