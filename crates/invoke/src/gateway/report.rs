//! What the gateway reports: EMF metrics per request and window, remaining-budget headers, `GET /usage`.

use super::*;

impl<L: Ledger, B: Bedrock> Gateway<L, B> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_request(
        &self,
        config: &BudgetConfig,
        user: Option<&str>,
        model: &str,
        approved: bool,
        denied: bool,
        shadow: bool,
        fallback: Option<bool>,
        usage: &Usage,
        cost: u64,
    ) {
        self.metrics.emit(&request_record(
            &RequestMetrics {
                application: &config.application,
                cost_center: config.cost_center.as_deref(),
                user,
                user_dimension: config.user_metrics,
                model,
                approved,
                denied,
                shadow_denied: shadow,
                fallback: fallback.unwrap_or(false),
                usage: *usage,
                cost_micro_usd: cost,
                ..Default::default()
            },
            now_millis(),
        ));
    }

    pub(super) fn emit_failed(
        &self,
        config: &BudgetConfig,
        user: Option<&str>,
        model: &str,
        worst_case: bool,
        charged: Charge,
    ) {
        self.metrics.emit(&request_record(
            &RequestMetrics {
                application: &config.application,
                cost_center: config.cost_center.as_deref(),
                user,
                user_dimension: config.user_metrics,
                model,
                approved: true,
                failed: true,
                worst_case,
                cost_micro_usd: charged.cost.0,
                cost_unknown: config.price_of(model).is_none(),
                ..Default::default()
            },
            now_millis(),
        ));
    }

    pub(super) async fn with_remaining(
        &self,
        config: &BudgetConfig,
        user: Option<&str>,
        mut reply: Reply,
    ) -> Reply {
        let now = now_seconds();
        // A seat sees what remains of its own budget too, read with the application's at once.
        let seat = user.and_then(|u| Some((u, config.user_budget(u)?)));
        let (Ok(mut slots), Ok(user_slots)) = (
            ledger::slots(&config.limits, None, now),
            ledger::slots(
                seat.map_or(&[][..], |(_, b)| &b.limits[..]),
                seat.map(|(u, _)| u),
                now,
            ),
        ) else {
            return reply;
        };
        let own = slots.len();
        slots.extend(user_slots);
        let Ok(mut usage) = self.ledger.usage_of(&config.application, slots).await else {
            return reply;
        };
        let users = usage.split_off(own);
        reply = remaining_headers(reply, "", &usage);
        reply = remaining_headers(reply, "user-", &users);
        self.emit_windows(&config.application, &usage, now);
        reply
    }

    pub(super) fn emit_windows(&self, application: &str, usage: &[WindowUsage], now: i64) {
        let timestamp = now_millis();
        let mut records = Vec::with_capacity(usage.len() * 2);
        for w in usage {
            let window = w.limit.window.as_str();
            let gauges = [
                w.limit.tokens.map(|limit| ("tokens", w.used.tokens, limit)),
                w.limit.usd.map(|limit| ("usd", w.used.cost.0, limit.0)),
            ];
            for (metric, used, limit) in gauges.into_iter().flatten() {
                let projected = projected_usage(used, &w.instance, now);
                records.push(window_record(
                    application,
                    window,
                    metric,
                    utilization_percent(used, limit),
                    utilization_percent(projected, limit),
                    timestamp,
                ));
            }
        }
        self.metrics.emit_all(&records);
    }

    /// The caller's usage and what remains in each window (`GET /usage`): its application's,
    /// and for a seat its user's too.
    pub async fn usage(&self, caller: &Caller) -> Reply {
        let application = caller.application.as_str();
        let unavailable =
            || Reply::error(503, "LedgerUnavailable", "the budget ledger is unavailable");
        let config = match self.config(application).await {
            Ok(Some(c)) => c,
            Ok(None) => return no_budget(application),
            Err(_) => return unavailable(),
        };
        let now = now_seconds();
        let Ok(usage) = self
            .ledger
            .usage(application, None, &config.limits, now)
            .await
        else {
            return unavailable();
        };
        // A token-only application may call models without a price: its spend in USD is then
        // unknown, and it is told so rather than shown $0.
        let callable: Vec<&String> = if config.models.is_empty() {
            self.settings.models.values().collect()
        } else {
            config.models.iter().collect()
        };
        let mut unpriced: Vec<&str> = callable
            .into_iter()
            .filter(|m| config.price_of(m).is_none())
            .map(String::as_str)
            .collect();
        unpriced.sort_unstable();
        unpriced.dedup();
        let mut body = json!({
            "application": application,
            "mode": config.mode.as_str(),
            "costKnown": unpriced.is_empty(),
            "unpricedModels": unpriced,
            "windows": windows_json(&usage, now)
        });
        let mut headers = vec![("x-tokenfence-application".into(), application.to_string())];
        if let Some(user) = &caller.user {
            let budget = config.user_budget(user);
            let limits = budget.map_or(&[][..], |b| &b.limits[..]);
            let Ok(usage) = self
                .ledger
                .usage(application, Some(user), limits, now)
                .await
            else {
                return unavailable();
            };
            body["user"] = json!({
                "name": user,
                // A user the application sets no budget for meets only the application's limits.
                "limited": budget.is_some(),
                "mode": budget.map_or(config.mode, |b| b.mode).as_str(),
                "windows": windows_json(&usage, now)
            });
            headers.push(("x-tokenfence-user".into(), user.clone()));
        }
        Reply {
            status: 200,
            headers,
            body,
            raw: None,
        }
    }
}

/// `x-tokenfence-remaining-{prefix}{window}-tokens` / `-usd` for each limited window.
fn remaining_headers(mut reply: Reply, prefix: &str, usage: &[WindowUsage]) -> Reply {
    for w in usage {
        let window = w.limit.window.as_str();
        if let Some(limit) = w.limit.tokens {
            reply = reply.with_header(
                &format!("x-tokenfence-remaining-{prefix}{window}-tokens"),
                limit.saturating_sub(w.used.tokens).to_string(),
            );
        }
        if let Some(limit) = w.limit.usd {
            reply = reply.with_header(
                &format!("x-tokenfence-remaining-{prefix}{window}-usd"),
                limit.saturating_sub(w.used.cost).to_string(),
            );
        }
    }
    reply
}

fn windows_json(usage: &[WindowUsage], now: i64) -> Vec<Value> {
    usage
        .iter()
        .map(|w| {
            let projected_tokens = projected_usage(w.used.tokens, &w.instance, now);
            let projected_cost = projected_usage(w.used.cost.0, &w.instance, now);
            json!({
                "window": w.limit.window.as_str(),
                "key": w.instance.key(),
                "resetsInSeconds": w.instance.seconds_until_reset(now),
                "usedTokens": w.used.tokens,
                "limitTokens": w.limit.tokens,
                "remainingTokens": w.limit.tokens.map(|l| l.saturating_sub(w.used.tokens)),
                "projectedTokens": projected_tokens,
                "usedMicroUsd": w.used.cost.0,
                "limitMicroUsd": w.limit.usd.map(|u| u.0),
                "remainingMicroUsd": w.limit.usd.map(|u| u.0.saturating_sub(w.used.cost.0)),
                "projectedMicroUsd": projected_cost
            })
        })
        .collect()
}
