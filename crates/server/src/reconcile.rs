//! The reconcile pass's schedule (see `quarterdeck_domain::core` `reconcile`): once at
//! start-up (with the settled intents checked too), then every [`EVERY`]. Safe on several nodes at once (a change's control side is
//! written at most once, checked under the audit chain's lock), so it needs no lease.

use quarterdeck_domain::Core;
use std::sync::Arc;
use std::time::Duration;

/// How often the pass runs after the one at start-up.
pub const EVERY: Duration = Duration::from_secs(600);

/// Runs the pass at start-up and every [`EVERY`]; `margin` is `reconcile_margin_seconds`.
pub async fn run(core: Arc<Core>, margin: time::Duration) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tick.tick().await;
        // At start-up the settled intents are checked too (a restored control database).
        // …until a start-up pass has gone through (a failed one is run again as such).
        let pass = if first {
            core.reconcile_at_start(margin).await
        } else {
            core.reconcile(margin).await
        };
        if pass.as_ref().is_ok_and(|r| r.failed == 0) {
            first = false;
        }
        if let Err(e) = pass {
            tracing::warn!(error = %e, "the reconcile pass failed; it runs again in 10 minutes");
        }
    }
}
