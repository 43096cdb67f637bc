//! Admission: the one place the budget decision is made. Plans the model, bounds the input,
//! reserves the worst case, and applies fallback, shadow, queue and fail-open policy.

use super::*;

impl<L: Ledger, B: Bedrock> Gateway<L, B> {
    pub(super) fn plan(
        &self,
        config: &BudgetConfig,
        model: &str,
        shaped: &Shaped,
    ) -> Result<Plan, Reply> {
        // The tier's price where the request asks for one; without one, a USD limit cannot hold
        // it, and under token-only limits the standard price still counts its cost.
        let mut price = match shaped.price_tier() {
            Ok(Some((tier, path))) => match config.price_in(model, Some(tier)) {
                Some(p) => Some(p),
                None if config.has_any_usd_limit() => {
                    return Err(field(
                        400,
                        path,
                        &format!(
                            "`{path}` asks for the `{tier}` tier, which the price book has no price for on model `{model}`, so application `{}`'s USD limits could not be enforced; leave it out, or price the tier in the spec's `price_book`",
                            config.application
                        ),
                    ));
                }
                None => config.price_of(model),
            },
            _ => config.price_of(model),
        };
        // A request that writes one-hour cache points is priced with every cache write at the
        // one-hour price (the dearest input kind, so its worst case too); a model without one
        // cannot be held to a USD limit for it.
        if let (Some(path), Some(p)) = (shaped.one_hour_cache(), price) {
            match p.with_one_hour_writes() {
                Some(one_hour) => price = Some(one_hour),
                None if config.has_any_usd_limit() => {
                    return Err(field(
                        400,
                        path,
                        &format!(
                            "`{path}` `1h` asks for one-hour cache writes, which the price book has no price for on model `{model}`, so application `{}`'s USD limits could not be enforced; use the default five-minute cache",
                            config.application
                        ),
                    ));
                }
                None => {}
            }
        }
        if price.is_none() && config.has_any_usd_limit() {
            return Err(Reply::error(
                403,
                "ModelNotPriced",
                format!(
                    "model `{model}` has no price, so the application's USD limits cannot be enforced on it"
                ),
            ));
        }
        let target = config.profile_for(model).unwrap_or(model).to_string();
        // The provider's hidden tool-use prompt depends on the model, so it is added per plan.
        let input_bound = shaped
            .content_bound
            .saturating_add(shaped.tool_prompt(model));
        Ok(Plan {
            model: model.to_string(),
            target,
            price,
            charge: config::worst_case(price, input_bound, shaped.max_tokens),
        })
    }

    /// Binary documents (PDF, Word, Excel) in a Converse request expand past their bytes, so a
    /// request holding one is counted exactly with CountTokens on models that support it
    /// (Anthropic's) and refused, naming the document, on others. Returns the content bound to
    /// reserve.
    pub(super) async fn counted_bound(&self, model: &str, shaped: &Shaped) -> Result<u64, Reply> {
        if shaped.family != Family::Converse {
            return Ok(shaped.content_bound);
        }
        let Some(document) = binary_document(&shaped.request) else {
            return Ok(shaped.content_bound);
        };
        let base = foundation_model(model);
        let refuse = |why: &str| {
            field(
                400,
                &document,
                &format!(
                    "a PDF, Word or Excel document's tokens are not bounded by its bytes, and {why}; send its text instead"
                ),
            )
        };
        if !base.starts_with("anthropic.") {
            return Err(refuse(&format!(
                "model `{model}` does not support CountTokens to count it"
            )));
        }
        let mut converse = serde_json::Map::new();
        for key in [
            "messages",
            "system",
            "toolConfig",
            "additionalModelRequestFields",
        ] {
            if let Some(v) = shaped.request.get(key) {
                converse.insert(key.into(), v.clone());
            }
        }
        let call = Call {
            operation: Operation::CountTokens,
            body: Bytes::from(json!({ "input": { "converse": converse } }).to_string()),
            headers: vec![("content-type".into(), "application/json".into())],
        };
        let unavailable = |why: String| {
            Reply::error(
                503,
                "CountTokensUnavailable",
                format!(
                    "the request holds a document that must be counted before it can be reserved, and CountTokens failed: {why}"
                ),
            )
        };
        let answer = self
            .bedrock
            .send(base, call)
            .await
            .map_err(|e| unavailable(e.message().to_string()))?;
        let body = match answer.body {
            AnswerBody::Full(b) => b,
            AnswerBody::Stream(_) => return Err(unavailable("it answered a stream".into())),
        };
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match (answer.status, parsed["inputTokens"].as_u64()) {
            (200, Some(n)) => Ok(n.saturating_add(PER_REQUEST_OVERHEAD)),
            (400, _) => Err(refuse(&format!(
                "Bedrock could not count it: {}",
                parsed["message"].as_str().unwrap_or("no message")
            ))),
            (status, _) => Err(unavailable(format!("status {status}"))),
        }
    }

    pub(super) async fn reserve(
        &self,
        config: &BudgetConfig,
        user: Option<&str>,
        id: &str,
        limits: &[Limit],
        user_limits: &[Limit],
        charge: Charge,
    ) -> Result<ReserveOutcome, LedgerError> {
        let attempt = ledger::new_attempt();
        let request = ReserveRequest {
            application: &config.application,
            user,
            user_limits,
            reservation_id: id,
            limits,
            charge,
            now: now_seconds(),
            hold_seconds: self.settings.hold_seconds,
            attempt: &attempt,
        };
        let outcome = self.ledger.reserve(&request).await;
        if outcome.is_err()
            && let Ok(reservation) = Reservation::of(&request)
        {
            // The write may have applied with its answer lost: refund this attempt's
            // reservation (Bedrock was not called), which changes nothing if it never applied.
            // If the refund fails too, the sweeper charges the reservation at its hold's end.
            let _ = tokio::time::timeout(
                SETTLE_RETRY_FOR,
                self.ledger.settle(&reservation, &refund()),
            )
            .await;
        }
        outcome
    }

    /// Admits a request against its application's budgets and its user's: validates it, plans
    /// the model and reserves the worst case (with fallback, shadow and queue handling). The
    /// caller calls Bedrock and then [`Gateway::complete`]. `deadline` bounds the only Bedrock
    /// call admission makes: the unreserved one when the ledger is down and policy allows it.
    pub async fn admit(&self, request: &Request<'_>, deadline: Instant) -> Admission {
        match self.admit_inner(request, deadline).await {
            Ok(admission) => admission,
            Err(reply) => Admission::Done(Outcome::Reply(reply)),
        }
    }

    async fn admit_inner(
        &self,
        request: &Request<'_>,
        deadline: Instant,
    ) -> Result<Admission, Reply> {
        let Request {
            caller,
            operation,
            model: model_param,
            body,
            headers,
            front,
            request_id,
        } = *request;
        let application = caller.application.as_str();
        ledger::check_request_id(request_id).map_err(|m| field(400, "requestId", &m))?;
        let Some(model) = self.resolve_model(model_param) else {
            return Err(unknown_model(model_param));
        };
        let mut shaped = ops::shape(
            operation,
            &model,
            body,
            headers,
            self.settings.max_body_bytes,
            self.settings.default_max_tokens,
        )?;

        // Without the application's configuration there is no allow-list and no limit to
        // enforce: never fail open here.
        let config = match self.config(application).await {
            Ok(Some(config)) => config,
            Ok(None) => return Err(no_budget(application)),
            Err(e) => return Err(ledger_reply(&e)),
        };
        if !config.allows(&model) {
            return Err(not_allowed(application, &model));
        }
        // Price books price tiers and one-hour cache writes per model (in `plan`); any other
        // field that changes the price per token cannot be held to a USD limit. Refused before
        // anything else is done for the request.
        if config.has_any_usd_limit()
            && let Err((path, value)) = shaped.price_tier()
        {
            return Err(field(
                400,
                path,
                &format!(
                    "`{path}` `{value}` changes the price per token, and the price book has no price for it, so application `{application}`'s USD limits could not be enforced; leave it out"
                ),
            ));
        }
        shaped.content_bound = self.counted_bound(&model, &shaped).await?;
        let mut plan = self.plan(&config, &model, &shaped)?;

        let user = caller.user.as_deref();
        let user_budget = user.and_then(|u| config.user_budget(u));
        // The limits reserved against; a shadow scope's are replaced by uncapped ones, so the
        // request still counts in its windows and the shadow usage stays true.
        let mut limits = std::borrow::Cow::Borrowed(&config.limits[..]);
        let mut user_limits =
            std::borrow::Cow::Borrowed(user_budget.map_or(&[][..], |b| &b.limits[..]));
        let mut fallback_used = false;
        let mut shadow_note: Option<String> = None;
        // At most four rounds: each scope is uncapped once, and the fallback is tried once.
        let reservation = loop {
            let outcome = self
                .reserve(
                    &config,
                    user,
                    request_id,
                    &limits,
                    &user_limits,
                    plan.charge,
                )
                .await;
            let (exceeded, retry_after, by_user) = match outcome {
                // The plan is the fallback's once it is tried: if policy fails open, it is the
                // cheaper model that is called, never the refused one.
                Err(e) => {
                    return self
                        .ledger_down(&config, &plan, shaped, e, deadline)
                        .await
                        .map(Admission::Done);
                }
                Ok(ReserveOutcome::Reserved(r)) => break r,
                Ok(ReserveOutcome::Duplicate { .. }) if front == Front::Sync => {
                    return Err(duplicate(request_id));
                }
                Ok(ReserveOutcome::Duplicate {
                    in_flight: true, ..
                }) => return Ok(Admission::Done(Outcome::Requeue { delay_seconds: 30 })),
                Ok(ReserveOutcome::Duplicate {
                    in_flight: false,
                    result,
                }) => return Ok(Admission::Done(Outcome::Duplicate { result })),
                Ok(ReserveOutcome::Exceeded {
                    exceeded,
                    retry_after,
                    by_user,
                }) => (exceeded, retry_after, by_user),
            };
            let (mode, on_exceed) = match user_budget {
                Some(b) if by_user => (b.mode, &b.on_exceed),
                _ => (config.mode, &config.on_exceed),
            };
            if mode == EnforcementMode::Shadow {
                let note = match user.filter(|_| by_user) {
                    Some(u) => format!("user `{u}`'s {}", describe(&exceeded)),
                    None => describe(&exceeded),
                };
                shadow_note = Some(match shadow_note {
                    Some(first) => format!("{first}; {note}"),
                    None => note,
                });
                let uncapped = |ls: &[Limit]| -> Vec<Limit> {
                    ls.iter()
                        .map(|l| Limit {
                            window: l.window,
                            tokens: None,
                            usd: None,
                        })
                        .collect()
                };
                if by_user {
                    user_limits = std::borrow::Cow::Owned(uncapped(&user_limits));
                } else {
                    limits = std::borrow::Cow::Owned(uncapped(&limits));
                }
                continue;
            }
            match (on_exceed, front) {
                // A model-native body only goes to a model of its own family.
                (ExceedAction::Fallback { model: fallback }, _)
                    if !fallback_used
                        && *fallback != plan.model
                        && Family::of(operation, fallback).ok() == Some(shaped.family) =>
                {
                    plan = self.plan(&config, fallback, &shaped)?;
                    fallback_used = true;
                }
                (ExceedAction::Queue, Front::Queue) => {
                    self.emit_request(
                        &config,
                        user,
                        &plan.model,
                        false,
                        true,
                        false,
                        None,
                        &Usage::default(),
                        0,
                    );
                    return Ok(Admission::Done(Outcome::Requeue {
                        delay_seconds: retry_after,
                    }));
                }
                _ => {
                    return Err(self.denied(
                        &config,
                        user.filter(|_| by_user),
                        &plan.model,
                        &exceeded,
                        retry_after,
                    ));
                }
            }
        };

        Ok(Admission::Admitted {
            ticket: Ticket {
                config,
                plan,
                reservation,
                fallback_used,
                shadow_note,
                user: caller.user.clone(),
            },
            shaped,
        })
    }

    /// The ledger could not reserve. Fail open (policy `allow`) only when it was unreachable:
    /// the configuration was read, so the allow-list was checked and the model is the one the
    /// plan chose. Contention and corrupt items always deny.
    pub(super) async fn ledger_down(
        &self,
        config: &BudgetConfig,
        plan: &Plan,
        shaped: Shaped,
        e: LedgerError,
        deadline: Instant,
    ) -> Result<Outcome, Reply> {
        let application = config.application.as_str();
        tracing::error!(application, error = %e, "ledger could not reserve");
        if self.settings.on_ledger_error == LedgerFailurePolicy::Deny
            || !matches!(e, LedgerError::Unavailable(_))
        {
            return Err(ledger_reply(&e));
        }
        // A stream cannot be relayed without a reservation to settle: streams fail closed.
        if shaped.operation.streams() {
            return Err(ledger_reply(&e));
        }
        let cost_center = config.cost_center.as_deref();
        let family = shaped.family;
        let call = Call {
            operation: shaped.operation,
            body: shaped.bytes(),
            headers: shaped.headers,
        };
        let called =
            match tokio::time::timeout_at(deadline.into(), self.bedrock.send(&plan.target, call))
                .await
            {
                Ok(Ok(answer)) => read_answer(family, answer),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(BedrockError::Timeout(
                    "Bedrock did not answer before the deadline".into(),
                )
                .into()),
            };
        match called {
            Ok(output) => {
                let usage = output.usage.unwrap_or_default();
                let actual = config::actual(plan.price, &usage);
                self.metrics.emit(&request_record(
                    &RequestMetrics {
                        application,
                        cost_center,
                        model: &plan.model,
                        approved: true,
                        unreserved: true,
                        usage,
                        cost_micro_usd: actual.cost.0,
                        cost_unknown: plan.price.is_none(),
                        ..Default::default()
                    },
                    now_millis(),
                ));
                Ok(Outcome::Reply(
                    output
                        .reply
                        .with_header("x-tokenfence-application", application)
                        .with_header("x-tokenfence-model", &plan.model)
                        .with_header(
                            "x-tokenfence-unreserved",
                            "ledger unavailable; allowed by policy",
                        ),
                ))
            }
            Err(failure) => {
                self.metrics.emit(&request_record(
                    &RequestMetrics {
                        application,
                        cost_center,
                        model: &plan.model,
                        failed: true,
                        unreserved: true,
                        ..Default::default()
                    },
                    now_millis(),
                ));
                Err(failure.reply)
            }
        }
    }

    /// The 429 for a request over a limit: the application's, or `user`'s when it is theirs.
    pub(super) fn denied(
        &self,
        config: &BudgetConfig,
        user: Option<&str>,
        model: &str,
        exceeded: &Exceeded,
        retry_after: i64,
    ) -> Reply {
        self.emit_request(
            config,
            user,
            model,
            false,
            true,
            false,
            None,
            &Usage::default(),
            0,
        );
        let unit = match exceeded.metric {
            LimitMetric::Tokens => "tokens",
            LimitMetric::Usd => "micro_usd",
        };
        let mut headers = vec![
            ("x-amzn-errortype".into(), "BudgetExceeded".into()),
            ("retry-after".into(), retry_after.to_string()),
            (
                "x-tokenfence-application".into(),
                config.application.clone(),
            ),
        ];
        if let Some(user) = user {
            headers.push(("x-tokenfence-user".into(), user.to_string()));
        }
        let mut reply = Reply {
            status: 429,
            headers,
            body: json!({
                "error": "BudgetExceeded",
                "message": format!("{} would exceed its {}; it resets in {}", scope(&config.application, user), describe(exceeded), readable_seconds(retry_after)),
                "window": exceeded.window.as_str(),
                "metric": exceeded.metric.to_string(),
                "unit": unit,
                "limit": exceeded.limit,
                "used": exceeded.used,
                "requested": exceeded.requested,
                "retryAfterSeconds": retry_after
            }),
            raw: None,
        };
        if let Some(user) = user {
            reply.body["user"] = json!(user);
        }
        reply
    }
}

/// Whose limit it is, in messages: ``application `web` `` or ``user `alice` of application `web` ``.
fn scope(application: &str, user: Option<&str>) -> String {
    match user {
        Some(user) => format!("user `{user}` of application `{application}`"),
        None => format!("application `{application}`"),
    }
}

/// `3h 20m`, `12m 5s`, `40s`: when a window resets, for people reading a 429.
fn readable_seconds(seconds: i64) -> String {
    let s = seconds.max(0);
    match (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60) {
        (0, 0, 0, sec) => format!("{sec}s"),
        (0, 0, m, sec) => format!("{m}m {sec}s"),
        (0, h, m, _) => format!("{h}h {m}m"),
        (d, h, _, _) => format!("{d}d {h}h"),
    }
}
