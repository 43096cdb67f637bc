//! Settlement: every admitted request is settled or refunded, on every path, and refunded only
//! when Bedrock provably generated nothing.

use super::*;

/// Charges an admitted request's whole reservation when its call to Bedrock is abandoned after
/// it was sent (a panic, a dropped future): Bedrock bills a generation whether or not anyone
/// reads the answer. It holds the ticket itself (moved in, handed back by `disarm`), so arming it
/// copies nothing. Without a runtime to settle on, the sweeper closes the reservation at the
/// same worst case.
pub(super) struct ChargeGuard<L: Ledger> {
    pub(super) ledger: Arc<L>,
    pub(super) ticket: Option<Ticket>,
    pub(super) remember_seconds: i64,
}

impl<L: Ledger> ChargeGuard<L> {
    pub(super) fn disarm(&mut self) -> Option<Ticket> {
        self.ticket.take()
    }
}

impl<L: Ledger> Drop for ChargeGuard<L> {
    fn drop(&mut self) {
        if let Some(Ticket { reservation, .. }) = self.ticket.take() {
            let ledger = Arc::clone(&self.ledger);
            let charge = worst_case_settlement(
                &reservation,
                "the call to Bedrock was abandoned after it was sent",
                self.remember_seconds,
            );
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        if let Err(e) = ledger.settle(&reservation, &charge).await {
                            tracing::error!(reservation = %reservation.id, error = %e, "charging an abandoned reservation failed; the sweeper charges it at its hold's end");
                        }
                    });
                }
                Err(_) => {
                    tracing::error!(reservation = %reservation.id, "no runtime to charge an abandoned reservation; the sweeper charges it at its hold's end")
                }
            }
        }
    }
}

/// A settlement that charges the whole reservation, recording why.
pub(super) fn worst_case_settlement(
    reservation: &Reservation,
    reason: &str,
    remember: i64,
) -> Settlement {
    Settlement {
        actual: reservation.charge,
        completion: Some(Completion {
            remember_seconds: remember,
            result: None,
            worst_case: Some(reason.to_string()),
        }),
        now: now_seconds(),
    }
}

pub(super) fn refund() -> Settlement {
    Settlement {
        actual: Charge::ZERO,
        completion: None,
        now: now_seconds(),
    }
}

impl<L: Ledger, B: Bedrock> Gateway<L, B> {
    /// Settles an admitted request with what Bedrock answered, emits its metrics and builds the
    /// reply: the actual usage when Bedrock reported it; a refund only for the errors that prove
    /// Bedrock generated nothing ([`Failure::refundable`]); the whole reservation for
    /// everything else (server errors, timeouts, cut connections, a response without usage).
    pub async fn complete(
        &self,
        ticket: Ticket,
        called: Result<Answered, Failure>,
        front: Front,
        request_id: &str,
    ) -> Outcome {
        let Ticket {
            config,
            plan,
            reservation,
            fallback_used,
            shadow_note,
            user,
        } = ticket;
        let remember = match front {
            Front::Queue => self.settings.remember_seconds,
            Front::Sync => self.settings.hold_seconds,
        };
        match called {
            Ok(output) => {
                let (actual, worst_case) = match &output.usage {
                    Some(usage) => (config::actual(plan.price, usage), None),
                    None => (reservation.charge, Some("the response reported no usage")),
                };
                let usage = output.usage.unwrap_or_default();
                let mut reply = output.reply;
                let completion = Completion {
                    remember_seconds: remember,
                    result: match front {
                        Front::Queue => Some(bounded_result(request_id, &reply)),
                        Front::Sync => None,
                    },
                    worst_case: worst_case.map(str::to_string),
                };
                let settlement = Settlement {
                    actual,
                    completion: Some(completion),
                    now: now_seconds(),
                };
                self.settle_or_retry(&reservation, settlement).await;
                reply = reply
                    .with_header("x-tokenfence-application", &config.application)
                    .with_header("x-tokenfence-model", &plan.model);
                if let Some(user) = &user {
                    reply = reply.with_header("x-tokenfence-user", user);
                }
                if fallback_used {
                    reply = reply.with_header("x-tokenfence-fallback", &plan.model);
                }
                if let Some(note) = &shadow_note {
                    reply =
                        reply.with_header("x-tokenfence-shadow", format!("would-reject; {note}"));
                }
                if worst_case.is_some() {
                    reply = reply.with_header("x-tokenfence-charged", "worst-case");
                }
                if plan.price.is_none() {
                    reply = reply.with_header("x-tokenfence-cost", "unknown");
                }
                self.metrics.emit(&request_record(
                    &RequestMetrics {
                        application: &config.application,
                        cost_center: config.cost_center.as_deref(),
                        user: user.as_deref(),
                        user_dimension: config.user_metrics,
                        model: &plan.model,
                        approved: true,
                        shadow_denied: shadow_note.is_some(),
                        fallback: fallback_used,
                        usage,
                        cost_micro_usd: actual.cost.0,
                        worst_case: worst_case.is_some(),
                        cost_unknown: plan.price.is_none(),
                        ..Default::default()
                    },
                    now_millis(),
                ));
                reply = self.with_remaining(&config, user.as_deref(), reply).await;
                Outcome::Reply(reply)
            }
            Err(failure) if failure.refundable => {
                self.settle_or_retry(&reservation, refund()).await;
                self.emit_failed(&config, user.as_deref(), &plan.model, false, Charge::ZERO);
                Outcome::Reply(
                    failure
                        .reply
                        .with_header("x-tokenfence-application", &config.application),
                )
            }
            Err(failure) => {
                let reason = failure.reason;
                tracing::warn!(reservation = %reservation.id, application = %config.application, reason = %reason, "charged at the worst case: Bedrock may have billed the generation");
                let charge = worst_case_settlement(&reservation, &reason, remember);
                self.settle_or_retry(&reservation, charge).await;
                self.emit_failed(
                    &config,
                    user.as_deref(),
                    &plan.model,
                    true,
                    reservation.charge,
                );
                Outcome::Reply(
                    failure
                        .reply
                        .with_header("x-tokenfence-application", &config.application)
                        .with_header("x-tokenfence-charged", "worst-case"),
                )
            }
        }
    }

    /// Settles, retrying inline for a few seconds: a transient ledger error must not leave a
    /// reservation unsettled. What still fails is left held; the sweeper charges it at its worst
    /// case when its hold ends, so the budget is never under-counted.
    pub(super) async fn settle_or_retry(&self, reservation: &Reservation, settlement: Settlement) {
        let give_up = Instant::now() + SETTLE_RETRY_FOR;
        let mut delay = Duration::from_millis(25);
        loop {
            match self.ledger.settle(reservation, &settlement).await {
                Ok(()) => return,
                Err(e) if Instant::now() + delay >= give_up => {
                    tracing::error!(reservation = %reservation.id, error = %e, "settlement failed; the sweeper charges the reservation at its worst case when its hold ends");
                    return;
                }
                Err(e) => {
                    tracing::warn!(reservation = %reservation.id, error = %e, "settlement failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Closes reservations held past their hold at their worst case ([`Ledger::sweep`]) and
    /// emits `ExpiredReservations` per application. Returns what it closed.
    pub async fn sweep(&self) -> Result<Vec<Expired>, LedgerError> {
        let expired = self.ledger.sweep(now_seconds()).await?;
        let mut per_app: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        for e in &expired {
            let entry = per_app.entry(e.application.as_str()).or_default();
            entry.0 += 1;
            entry.1 = entry.1.saturating_add(e.charge.tokens);
            entry.2 = entry.2.saturating_add(e.charge.cost.0);
        }
        for (application, (count, tokens, cost)) in per_app {
            tracing::warn!(
                application,
                count,
                "reservations held past their hold were charged at their worst case"
            );
            self.metrics.emit(&expired_record(
                application,
                count,
                tokens,
                cost,
                now_millis(),
            ));
        }
        Ok(expired)
    }
}
