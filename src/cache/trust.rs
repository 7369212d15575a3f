//! Running the External ID enforcement check for a mapping before it vends, and again
//! when a recheck is due (the check itself and what its verdict means are in `verify`).

use super::budget::Priority;
use super::table::MappingSpec;
use super::{Inner, Stamp};
use crate::config::EnforcementMode;
use crate::events::{TrustCheckInconclusive, TrustPolicyChecked};
use crate::model::FetchError;
use crate::verify;

impl Inner {
    /// The External ID enforcement check (docs/design.md, Credential lifecycle), run
    /// before a mapping first vends and again once `recheck_interval` has passed since
    /// the last conclusive result: runs the probes when due, records and reports a
    /// conclusive verdict, and leaves what that means for the mapping to
    /// [`verify::trust_decision`]. `off` skips the check.
    pub(super) async fn check_trust(
        &self,
        spec: &MappingSpec,
        priority: Priority,
    ) -> Result<(), FetchError> {
        if spec.enforcement == EnforcementMode::Off {
            return Ok(());
        }
        let now = self.clock.now();
        let recheck = self.current_table().recheck_interval;
        let known = spec.enforcement_status();
        let checked_at = self
            .lock_slots()
            .get(spec.owner_key())
            .and_then(|s| s.enforcement_checked_at());
        let due = verify::check_due(checked_at, now, recheck);
        let name = spec.key.name();
        let this_round = if due {
            // Each probe waits for a budget token and a concurrency permit like any
            // AssumeRole, and holds the permit while it runs.
            let result = verify::check_external_id_enforcement(
                self.assumer.as_ref(),
                &spec.input,
                || async move {
                    self.budget.acquire(priority, spec.owner_key()).await;
                    self.sts_permit(priority).await
                },
            )
            .await;
            let concluded_at = self.clock.now();
            Some(match result {
                Ok(verdict) => {
                    // No slot, or a key no longer applied: a reload removed or changed
                    // the mapping while the probes ran (a request of the generation
                    // before can bring the slot back). The verdict is about a role no
                    // mapping uses any more, and a mapping now bearing the same name
                    // must not report it as its own. A per-job entry (registered, so
                    // its mapping is applied) records it as its mapping's, in the
                    // mapping's slot.
                    let current = {
                        let mut slots = self.lock_slots();
                        let slot = if !self.is_current(spec) {
                            None
                        } else if spec.job_of.is_some() {
                            Some(slots.entry(spec.owner_key().clone()).or_default())
                        } else {
                            slots.get_mut(&spec.key)
                        };
                        match slot {
                            Some(slot) => {
                                spec.set_enforcement_status(verdict.into());
                                slot.enforcement_checked_at = Stamp::new(Some(concluded_at));
                                true
                            }
                            None => false,
                        }
                    };
                    if current {
                        TrustPolicyChecked {
                            mapping: name,
                            role_arn: &spec.input.role_arn,
                            mode: spec.enforcement,
                            verdict,
                        }
                        .emit(&self.metrics);
                    }
                    Ok(verdict)
                }
                Err(error) => {
                    TrustCheckInconclusive {
                        mapping: name,
                        code: &error.code,
                        previous: known,
                    }
                    .emit();
                    Err(error)
                }
            })
        } else {
            None
        };
        verify::trust_decision(spec.enforcement, known, this_round)
    }
}
