//! The production ledger on DynamoDB.
//!
//! Items (partition key `pk`, sort key `sk`):
//! - counter: `app#{app}` / `{window}#{key}` with `tokens`, `micro_usd`, `expires_at`; a
//!   user's counter: `app#{app}` / `user#{user}#{window}#{key}`;
//! - reservation: `app#{app}` / `res#{id}` with `state` (`reserved` | `done` | `charged`),
//!   `tokens`, `micro_usd`, `attempt`, `result`, `reason` (why it was charged its worst case),
//!   `expires_at`, and while held `hold_until` and `open_shard`: the sparse index [`OPEN_INDEX`]
//!   holds only held reservations, so the sweeper finds those past their hold without a scan;
//! - configuration: `app#{app}` / `config` with `config` (JSON) and `version`;
//! - identity: `identity#apikey#{id}` or `identity#queue#{arn}` / `identity` with `application`;
//! - issued key: `key#{digest}` / `key` with `application`, `user`, `id`, `created`, and its
//!   listing entry `app#{app}` / `key#{id}` with `digest`, `user`, `created` (both written and
//!   deleted in one transaction).
//!
//! A reservation is one `TransactWriteItems`: a conditional `ADD` per window plus the reservation
//! record, so it holds in every window or in none. DynamoDB conditions cannot add two attributes,
//! so each condition compares the counter with `limit - request`, computed here.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, KeysAndAttributes, Put,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use budget::config::BudgetConfig;
use budget::{Charge, Exceeded, LimitMetric, MicroUsd};

use crate::*;

/// Attempts of a transaction that conflicts with concurrent ones before giving up.
const CONFLICT_ATTEMPTS: u32 = 12;

/// The sparse global secondary index of held reservations (partition `open_shard`, sort
/// `hold_until`, keys only plus the reserved charge).
pub const OPEN_INDEX: &str = "open";
/// Partitions of [`OPEN_INDEX`], so that held reservations spread their index writes.
pub const OPEN_SHARDS: u32 = 16;

/// How long after its hold a held record is kept from TTL deletion, so the sweeper still finds it.
const HELD_RECORD_GRACE_SECONDS: i64 = 86_400;

fn open_shard(id: &str) -> String {
    // FNV-1a: stable across processes, unlike the std hasher.
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("open#{}", h % u64::from(OPEN_SHARDS))
}

/// The ledger in a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A settlement applies to a held reservation of the same attempt (records written before attempts
/// were recorded have none), so a refund of an attempt whose write never applied cannot take
/// another delivery's reservation.
const SETTLE_CONDITION: &str =
    "#state = :reserved AND (attribute_not_exists(attempt) OR attempt = :attempt)";

fn app_pk(app: &str) -> String {
    format!("app#{app}")
}

fn unavailable<E: std::fmt::Debug + ProvideErrorMetadata>(op: &str, e: &E) -> LedgerError {
    let detail = match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => format!("{e:?}"),
    };
    LedgerError::Unavailable(format!("{op}: {detail}"))
}

fn number(
    item: &HashMap<String, AttributeValue>,
    attr: &str,
    key: &str,
) -> Result<u64, LedgerError> {
    match item.get(attr) {
        None => Ok(0),
        Some(AttributeValue::N(text)) => {
            // ADD of negative deltas can never take a counter below zero unless the item was
            // tampered with; read such values as zero rather than failing every request.
            if text.starts_with('-') {
                return Ok(0);
            }
            text.parse().map_err(|_| LedgerError::Corrupt {
                key: key.into(),
                reason: format!("`{attr}` is `{text}`"),
            })
        }
        Some(other) => Err(LedgerError::Corrupt {
            key: key.into(),
            reason: format!("`{attr}` is not a number: {other:?}"),
        }),
    }
}

/// Decodes an application's configuration item as `GetItem` returns it. The table is written by
/// the provider, but anyone with table access can write to it: a malformed item is reported as
/// corrupt under `key`, never trusted or panicked on.
pub fn decode_config(
    key: &str,
    item: &HashMap<String, AttributeValue>,
) -> Result<BudgetConfig, LedgerError> {
    let Some(AttributeValue::S(json)) = item.get("config") else {
        return Err(LedgerError::Corrupt {
            key: key.to_string(),
            reason: "no `config` string".into(),
        });
    };
    serde_json::from_str(json).map_err(|e| LedgerError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Decodes a window counter item (`tokens`, `micro_usd`; absent means zero) stored under `key`.
pub fn decode_charge(
    item: &HashMap<String, AttributeValue>,
    key: &str,
) -> Result<Charge, LedgerError> {
    Ok(Charge::new(
        number(item, "tokens", key)?,
        MicroUsd(number(item, "micro_usd", key)?),
    ))
}

impl DynamoLedger {
    /// A ledger in `table`, through `client` (whose endpoint comes from the standard AWS
    /// configuration, e.g. `AWS_ENDPOINT_URL_DYNAMODB`).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoLedger {
            client,
            table: table.into(),
        }
    }

    /// Creates the table as `synth render` declares it (`pk`/`sk` strings, on demand, the sparse
    /// [`OPEN_INDEX`]), for `invoke serve --ledger dynamodb:TABLE` on a fresh table and for tests.
    pub async fn create_table(&self) -> Result<(), LedgerError> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
            Projection, ProjectionType, ScalarAttributeType,
        };
        let attr = |name: &str, kind: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
                .expect("name and type are set")
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .expect("name and type are set")
        };
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk", ScalarAttributeType::S))
            .attribute_definitions(attr("sk", ScalarAttributeType::S))
            .attribute_definitions(attr("open_shard", ScalarAttributeType::S))
            .attribute_definitions(attr("hold_until", ScalarAttributeType::N))
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(OPEN_INDEX)
                    .key_schema(key("open_shard", KeyType::Hash))
                    .key_schema(key("hold_until", KeyType::Range))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::Include)
                            .non_key_attributes("tokens")
                            .non_key_attributes("micro_usd")
                            .build(),
                    )
                    .build()
                    .expect("name, keys and projection are set"),
            )
            .send()
            .await
            .map_err(|e| unavailable("CreateTable", &e))?;
        Ok(())
    }

    /// Reservations held and not yet settled or swept (a count over [`OPEN_INDEX`]), for audits
    /// and tests.
    pub async fn open_reservations(&self) -> Result<usize, LedgerError> {
        Ok(self.held_before(i64::MAX).await?.len())
    }

    /// Every held reservation whose hold ends before `before`, from [`OPEN_INDEX`] (keys and the
    /// reserved charge), over every shard and page.
    async fn held_before(
        &self,
        before: i64,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, LedgerError> {
        let mut items = Vec::new();
        for shard in 0..OPEN_SHARDS {
            let shard_items: Vec<_> = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(OPEN_INDEX)
                .key_condition_expression("open_shard = :shard AND hold_until < :before")
                .expression_attribute_values(":shard", s(format!("open#{shard}")))
                .expression_attribute_values(":before", n(before))
                .into_paginator()
                .items()
                .send()
                .collect::<Result<_, _>>()
                .await
                .map_err(|e| unavailable("Query", &e))?;
            items.extend(shard_items);
        }
        Ok(items)
    }

    /// Every item of partition `pk` whose sort key starts with `prefix`, read consistently (a
    /// paginated query).
    async fn partition(
        &self,
        pk: String,
        prefix: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, LedgerError> {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(&pk))
            .expression_attribute_values(":prefix", s(prefix))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<_, _>>()
            .await
            .map_err(|e| unavailable("Query", &e))
    }

    /// Every user counter of `application`: the user, its window occurrence's key
    /// (`day#2026-11-27`) and what it holds (a paginated query of the application's partition:
    /// for reports, not for the request path).
    pub async fn user_counters(
        &self,
        application: &str,
    ) -> Result<Vec<(String, String, Charge)>, LedgerError> {
        let mut counters = Vec::new();
        for item in self.partition(app_pk(application), "user#").await? {
            let Some(AttributeValue::S(sk)) = item.get("sk") else {
                continue;
            };
            let Some((user, window)) = sk.strip_prefix("user#").and_then(|r| r.split_once('#'))
            else {
                continue;
            };
            counters.push((
                user.to_string(),
                window.to_string(),
                decode_charge(&item, sk)?,
            ));
        }
        Ok(counters)
    }

    /// Every application's budget configuration in the table, ordered by application (a paginated
    /// scan: for reports, not for the request path).
    pub async fn budgets(&self) -> Result<Vec<BudgetConfig>, LedgerError> {
        let items: Vec<HashMap<String, AttributeValue>> = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("sk = :config")
            .expression_attribute_values(":config", s("config"))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<_, _>>()
            .await
            .map_err(|e| unavailable("Scan", &e))?;
        let mut configs = Vec::with_capacity(items.len());
        for item in items {
            let pk = match item.get("pk") {
                Some(AttributeValue::S(pk)) => pk.clone(),
                _ => "?".to_string(),
            };
            configs.push(decode_config(&format!("{pk}/config"), &item)?);
        }
        configs.sort_by(|a, b| a.application.cmp(&b.application));
        Ok(configs)
    }

    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        app: &str,
    ) -> Result<Option<Vec<CancellationReason>>, LedgerError> {
        let mut delay = Duration::from_millis(5);
        for attempt in 1..=CONFLICT_ATTEMPTS {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(None),
                Err(SdkError::ServiceError(e)) => match e.err() {
                    TransactWriteItemsError::TransactionCanceledException(tc) => {
                        let reasons = tc.cancellation_reasons().to_vec();
                        let conflict = reasons
                            .iter()
                            .any(|r| r.code() == Some("TransactionConflict"));
                        let failed = reasons
                            .iter()
                            .any(|r| r.code() == Some("ConditionalCheckFailed"));
                        if failed || !conflict {
                            return Ok(Some(reasons));
                        }
                    }
                    TransactWriteItemsError::TransactionInProgressException(_) => {}
                    other => return Err(unavailable("TransactWriteItems", other)),
                },
                Err(e) => return Err(LedgerError::Unavailable(format!("TransactWriteItems: {e}"))),
            }
            if attempt < CONFLICT_ATTEMPTS {
                // Jitter from the clock's low bits: enough to desynchronise competing retries.
                let jitter = u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos()),
                ) % 5;
                tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
        }
        Err(LedgerError::Contention(app.to_string()))
    }

    /// The string attribute `name` of the item (`pk`, `sk`), if the item and attribute exist.
    async fn string_attribute(
        &self,
        pk: String,
        sk: &str,
        name: &str,
        consistent: bool,
    ) -> Result<Option<String>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", &e))?;
        Ok(out.item.and_then(|item| match item.get(name) {
            Some(AttributeValue::S(v)) => Some(v.clone()),
            _ => None,
        }))
    }

    async fn claim_holder(&self, claim: &Claim) -> Result<Option<String>, LedgerError> {
        self.string_attribute(claim.key(), "claim", "owner", true)
            .await
    }

    fn counter_key(app: &str, slot: &Slot) -> HashMap<String, AttributeValue> {
        let sk = match &slot.user {
            None => slot.instance.key(),
            Some(user) => format!("user#{user}#{}", slot.instance.key()),
        };
        HashMap::from([
            ("pk".to_string(), s(app_pk(app))),
            ("sk".to_string(), s(sk)),
        ])
    }

    fn record_key(app: &str, id: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("pk".to_string(), s(app_pk(app))),
            ("sk".to_string(), s(format!("res#{id}"))),
        ])
    }
}

impl Ledger for DynamoLedger {
    async fn budget(&self, application: &str) -> Result<Option<BudgetConfig>, LedgerError> {
        let key = format!("{}/config", app_pk(application));
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(app_pk(application)))
            .key("sk", s("config"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", &e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        decode_config(&key, &item).map(Some)
    }

    async fn put_budget(
        &self,
        config: &BudgetConfig,
        identities: &[Identity],
    ) -> Result<(), LedgerError> {
        let json = serde_json::to_string(config).expect("a configuration serializes");
        let app = &config.application;
        // Conditional writes, so that two resources declaring one application cannot both
        // succeed and no template can take over another application's keys or queues: the
        // configuration is free or its owner's; an identity is this application's, free, or
        // moved by its own owner (a replacement renaming the application).
        let held = match config.owner {
            Some(_) => "attribute_not_exists(pk) OR #owner = :owner",
            None => "attribute_not_exists(pk) OR attribute_not_exists(#owner)",
        };
        let conditional = |mut put: aws_sdk_dynamodb::types::builders::PutBuilder,
                           condition: String| {
            put = put
                .condition_expression(condition)
                .expression_attribute_names("#owner", "owner");
            if let Some(owner) = &config.owner {
                put = put
                    .item("owner", s(owner))
                    .expression_attribute_values(":owner", s(owner));
            }
            TransactWriteItem::builder()
                .put(put.build().expect("table and item are set"))
                .build()
        };
        let mut items = vec![conditional(
            Put::builder()
                .table_name(&self.table)
                .item("pk", s(app_pk(app)))
                .item("sk", s("config"))
                .item("config", s(json))
                .item("version", n(config.version)),
            held.to_string(),
        )];
        for identity in identities {
            items.push(conditional(
                Put::builder()
                    .table_name(&self.table)
                    .item("pk", s(identity.key()))
                    .item("sk", s("identity"))
                    .item("application", s(app))
                    .expression_attribute_values(":app", s(app)),
                format!("application = :app OR {held}"),
            ));
        }
        let Some(reasons) = self.transact(items, app).await? else {
            return Ok(());
        };
        let failed = reasons
            .iter()
            .position(|r| r.code() == Some("ConditionalCheckFailed"));
        match failed {
            Some(0) => {
                let held = self.budget(app).await?;
                Err(owned_config(
                    app,
                    held.as_ref().and_then(|c| c.owner.as_deref()),
                ))
            }
            Some(i) => {
                let identity = &identities[i - 1];
                let holder = self.application_for(identity).await?.unwrap_or_default();
                Err(owned_identity(identity, &holder))
            }
            None => Err(LedgerError::Unavailable(format!(
                "writing the configuration was cancelled: {reasons:?}"
            ))),
        }
    }

    async fn delete_budget(
        &self,
        application: &str,
        owner: Option<&str>,
        identities: &[Identity],
    ) -> Result<bool, LedgerError> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(app_pk(application)))
            .key("sk", s("config"))
            .expression_attribute_names("#owner", "owner");
        let delete = match owner {
            Some(owner) => delete
                .condition_expression("attribute_not_exists(pk) OR #owner = :owner")
                .expression_attribute_values(":owner", s(owner)),
            None => delete.condition_expression("attribute_not_exists(#owner)"),
        };
        match delete.send().await {
            Ok(_) => {}
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                return Ok(false);
            }
            Err(e) => return Err(unavailable("DeleteItem", &e)),
        }
        self.delete_identities(application, identities).await?;
        Ok(true)
    }

    async fn delete_identities(
        &self,
        application: &str,
        identities: &[Identity],
    ) -> Result<(), LedgerError> {
        for identity in identities {
            let result = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(identity.key()))
                .key("sk", s("identity"))
                .condition_expression("application = :app")
                .expression_attribute_values(":app", s(application))
                .send()
                .await;
            match result {
                // Gone already, or another application's now: not ours to delete.
                Ok(_) => {}
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(unavailable("DeleteItem", &e)),
            }
        }
        Ok(())
    }

    async fn claim(
        &self,
        claim: &Claim,
        owner: &str,
        application: &str,
    ) -> Result<(), LedgerError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(claim.key()))
            .item("sk", s("claim"))
            .item("owner", s(owner))
            .item("application", s(application))
            .condition_expression("attribute_not_exists(pk) OR #owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                let old = match e.err() {
                    PutItemError::ConditionalCheckFailedException(c) => c.item(),
                    _ => None,
                };
                let holder = match old.and_then(|i| i.get("owner")) {
                    Some(AttributeValue::S(o)) => o.clone(),
                    _ => self.claim_holder(claim).await?.unwrap_or_default(),
                };
                Err(owned_claim(claim, &holder))
            }
            Err(e) => Err(unavailable("PutItem", &e)),
        }
    }

    async fn release(
        &self,
        claim: &Claim,
        owner: &str,
        application: Option<&str>,
    ) -> Result<Released, LedgerError> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(claim.key()))
            .key("sk", s("claim"))
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner));
        let delete = match application {
            Some(app) => delete
                .condition_expression(
                    "attribute_not_exists(pk) OR (#owner = :owner AND application = :app)",
                )
                .expression_attribute_values(":app", s(app)),
            None => delete.condition_expression("attribute_not_exists(pk) OR #owner = :owner"),
        };
        let result = delete.send().await;
        match result {
            Ok(_) => Ok(Released::Yes),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(Released::HeldElsewhere)
            }
            Err(e) => Err(unavailable("DeleteItem", &e)),
        }
    }

    async fn application_for(&self, identity: &Identity) -> Result<Option<String>, LedgerError> {
        // Eventually consistent: the gateway's lookups are many and an identity changes rarely.
        self.string_attribute(identity.key(), "identity", "application", false)
            .await
    }

    async fn reserve(&self, request: &ReserveRequest<'_>) -> Result<ReserveOutcome, LedgerError> {
        if let Some(outcome) = precheck(request)? {
            return Ok(outcome);
        }
        let app = request.application;
        let slots = request_slots(request)?;
        let mut items = Vec::with_capacity(slots.len() + 1);
        for slot in &slots {
            let (max_tokens, max_usd) = slot.limit.ceiling_before(request.charge);
            let mut conditions = Vec::new();
            let mut update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(Self::counter_key(app, slot)))
                .update_expression(
                    "ADD tokens :t, micro_usd :c SET expires_at = if_not_exists(expires_at, :exp)",
                )
                .expression_attribute_values(":t", n(request.charge.tokens))
                .expression_attribute_values(":c", n(request.charge.cost.0))
                .expression_attribute_values(":exp", n(slot.instance.end + COUNTER_GRACE_SECONDS))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            if let Some(max) = max_tokens {
                conditions.push("(attribute_not_exists(tokens) OR tokens <= :tmax)");
                update = update.expression_attribute_values(":tmax", n(max));
            }
            if let Some(max) = max_usd {
                conditions.push("(attribute_not_exists(micro_usd) OR micro_usd <= :cmax)");
                update = update.expression_attribute_values(":cmax", n(max));
            }
            if !conditions.is_empty() {
                update = update.condition_expression(conditions.join(" AND "));
            }
            items.push(
                TransactWriteItem::builder()
                    .update(update.build().expect("table, key and expression are set"))
                    .build(),
            );
        }
        items.push(
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(Self::record_key(app, request.reservation_id)))
                        .item("state", s("reserved"))
                        .item("attempt", s(request.attempt))
                        .item("tokens", n(request.charge.tokens))
                        .item("micro_usd", n(request.charge.cost.0))
                        .item(
                            "hold_until",
                            n(request.now.saturating_add(request.hold_seconds)),
                        )
                        .item("open_shard", s(open_shard(request.reservation_id)))
                        .item(
                            "expires_at",
                            n(request
                                .now
                                .saturating_add(request.hold_seconds)
                                .saturating_add(HELD_RECORD_GRACE_SECONDS)),
                        )
                        // A record past its expiry (TTL deletion lags) no longer blocks the ID,
                        // nor does one charged its worst case (a retry is a new generation). A
                        // held one past its hold waits for the sweeper to charge it.
                        .condition_expression(
                            "attribute_not_exists(sk) OR expires_at < :now OR #state = :charged",
                        )
                        .expression_attribute_names("#state", "state")
                        .expression_attribute_values(":now", n(request.now))
                        .expression_attribute_values(":charged", s("charged"))
                        .return_values_on_condition_check_failure(
                            ReturnValuesOnConditionCheckFailure::AllOld,
                        )
                        .build()
                        .expect("table and item are set"),
                )
                .build(),
        );

        let Some(reasons) = self.transact(items, app).await? else {
            return Ok(ReserveOutcome::Reserved(Reservation::held(request, slots)));
        };
        // The record is last: a failed condition there means the request was seen before.
        if let Some(record) = reasons
            .get(slots.len())
            .filter(|r| r.code() == Some("ConditionalCheckFailed"))
        {
            let item = record.item().cloned().unwrap_or_default();
            if matches!(item.get("attempt"), Some(AttributeValue::S(a)) if a == request.attempt) {
                // Our own write: it applied (counters included, the transaction is atomic) and
                // its answer was lost, so the SDK's retry met it.
                return Ok(ReserveOutcome::Reserved(Reservation::held(request, slots)));
            }
            let in_flight =
                matches!(item.get("state"), Some(AttributeValue::S(state)) if state == "reserved");
            let result = match item.get("result") {
                Some(AttributeValue::S(r)) => Some(r.clone()),
                _ => None,
            };
            return Ok(ReserveOutcome::Duplicate { in_flight, result });
        }
        for (slot, reason) in slots.iter().zip(&reasons) {
            if reason.code() != Some("ConditionalCheckFailed") {
                continue;
            }
            let used = decode_charge(
                &reason.item().cloned().unwrap_or_default(),
                &slot.instance.key(),
            )?;
            let exceeded = slot
                .limit
                .admits(used, request.charge)
                .err()
                .unwrap_or(Exceeded {
                    // The counter moved between the condition and our read of it: report the limit.
                    window: slot.limit.window,
                    metric: if slot.limit.tokens.is_some() {
                        LimitMetric::Tokens
                    } else {
                        LimitMetric::Usd
                    },
                    limit: slot
                        .limit
                        .tokens
                        .or(slot.limit.usd.map(|u| u.0))
                        .unwrap_or(0),
                    used: used.tokens,
                    requested: request.charge.tokens,
                });
            return Ok(ReserveOutcome::Exceeded {
                exceeded,
                retry_after: slot.instance.seconds_until_reset(request.now),
                by_user: slot.user.is_some(),
            });
        }
        Err(LedgerError::Unavailable(format!(
            "reservation cancelled for an unexpected reason: {reasons:?}"
        )))
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        settlement: &Settlement,
    ) -> Result<(), LedgerError> {
        let app = reservation.application.as_str();
        let delta_tokens =
            i128::from(settlement.actual.tokens) - i128::from(reservation.charge.tokens);
        let delta_cost =
            i128::from(settlement.actual.cost.0) - i128::from(reservation.charge.cost.0);
        let mut items = Vec::with_capacity(reservation.slots.len() + 1);
        for slot in &reservation.slots {
            items.push(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(Self::counter_key(app, slot)))
                            .update_expression("ADD tokens :t, micro_usd :c")
                            .expression_attribute_values(":t", n(delta_tokens))
                            .expression_attribute_values(":c", n(delta_cost))
                            .build()
                            .expect("table, key and expression are set"),
                    )
                    .build(),
            );
        }
        let record = match &settlement.completion {
            Some(c) => {
                let mut update = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(Self::record_key(app, &reservation.id)))
                    .condition_expression(SETTLE_CONDITION)
                    .expression_attribute_names("#state", "state")
                    .expression_attribute_values(":reserved", s("reserved"))
                    .expression_attribute_values(":attempt", s(&reservation.attempt))
                    .expression_attribute_values(":exp", n(settlement.now + c.remember_seconds));
                let mut set = vec!["#state = :closed", "expires_at = :exp"];
                update = match &c.worst_case {
                    Some(reason) => {
                        set.push("reason = :reason");
                        update
                            .expression_attribute_values(":closed", s("charged"))
                            .expression_attribute_values(":reason", s(reason))
                    }
                    None => update.expression_attribute_values(":closed", s("done")),
                };
                if let Some(result) = &c.result {
                    set.push("#result = :result");
                    update = update
                        .expression_attribute_names("#result", "result")
                        .expression_attribute_values(":result", s(result));
                }
                update = update.update_expression(format!(
                    "SET {} REMOVE hold_until, open_shard",
                    set.join(", ")
                ));
                TransactWriteItem::builder()
                    .update(update.build().expect("table, key and expression are set"))
                    .build()
            }
            None => TransactWriteItem::builder()
                .delete(
                    aws_sdk_dynamodb::types::Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(Self::record_key(app, &reservation.id)))
                        .condition_expression(SETTLE_CONDITION)
                        .expression_attribute_names("#state", "state")
                        .expression_attribute_values(":reserved", s("reserved"))
                        .expression_attribute_values(":attempt", s(&reservation.attempt))
                        .build()
                        .expect("table and key are set"),
                )
                .build(),
        };
        items.push(record);
        match self.transact(items, app).await? {
            None => Ok(()),
            // The record's condition failed: already settled. Settling twice changes nothing.
            Some(reasons)
                if reasons
                    .last()
                    .is_some_and(|r| r.code() == Some("ConditionalCheckFailed")) =>
            {
                Ok(())
            }
            Some(reasons) => Err(LedgerError::Unavailable(format!(
                "settlement cancelled: {reasons:?}"
            ))),
        }
    }

    async fn sweep(&self, now: i64) -> Result<Vec<Expired>, LedgerError> {
        let mut expired = Vec::new();
        for item in self.held_before(now).await? {
            let (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) =
                (item.get("pk"), item.get("sk"))
            else {
                continue;
            };
            let (Some(application), Some(id)) = (pk.strip_prefix("app#"), sk.strip_prefix("res#"))
            else {
                continue;
            };
            let closed = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(pk))
                .key("sk", s(sk))
                .condition_expression("#state = :reserved AND hold_until < :now")
                .update_expression(
                    "SET #state = :charged, reason = :reason, expires_at = :exp \
                             REMOVE hold_until, open_shard",
                )
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":reserved", s("reserved"))
                .expression_attribute_values(":charged", s("charged"))
                .expression_attribute_values(":reason", s(EXPIRED_REASON))
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":exp", n(now.saturating_add(CHARGED_RECORD_SECONDS)))
                .send()
                .await;
            match closed {
                Ok(_) => expired.push(Expired {
                    application: application.to_string(),
                    reservation_id: id.to_string(),
                    charge: decode_charge(&item, sk)?,
                }),
                // Settled meanwhile: nothing to close.
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(unavailable("UpdateItem", &e)),
            }
        }
        Ok(expired)
    }

    async fn usage_of(
        &self,
        application: &str,
        slots: Vec<Slot>,
    ) -> Result<Vec<WindowUsage>, LedgerError> {
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = KeysAndAttributes::builder().consistent_read(true);
        for slot in &slots {
            keys = keys.keys(Self::counter_key(application, slot));
        }
        let out = self
            .client
            .batch_get_item()
            .request_items(&self.table, keys.build().expect("keys are set"))
            .send()
            .await
            .map_err(|e| unavailable("BatchGetItem", &e))?;
        let items = out
            .responses
            .and_then(|mut r| r.remove(&self.table))
            .unwrap_or_default();
        slots
            .into_iter()
            .map(|slot| {
                let key = match Self::counter_key(application, &slot).remove("sk") {
                    Some(AttributeValue::S(sk)) => sk,
                    _ => slot.instance.key(),
                };
                let item = items
                    .iter()
                    .find(|i| matches!(i.get("sk"), Some(AttributeValue::S(sk)) if *sk == key));
                let used = match item {
                    Some(item) => decode_charge(item, &key)?,
                    None => Charge::ZERO,
                };
                Ok(WindowUsage {
                    limit: slot.limit,
                    instance: slot.instance,
                    used,
                })
            })
            .collect()
    }

    async fn put_key(&self, digest: &str, key: &IssuedKey) -> Result<(), LedgerError> {
        let put = |item: HashMap<String, AttributeValue>| {
            let mut put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            if let Some(user) = &key.user {
                put = put.item("user", s(user));
            }
            TransactWriteItem::builder()
                .put(put.build().expect("table and item are set"))
                .build()
        };
        let by_digest = HashMap::from([
            ("pk".to_string(), s(format!("key#{digest}"))),
            ("sk".to_string(), s("key")),
            ("application".to_string(), s(&key.application)),
            ("id".to_string(), s(&key.id)),
            ("created".to_string(), n(key.created)),
        ]);
        let listed = HashMap::from([
            ("pk".to_string(), s(app_pk(&key.application))),
            ("sk".to_string(), s(format!("key#{}", key.id))),
            ("digest".to_string(), s(digest)),
            ("created".to_string(), n(key.created)),
        ]);
        match self
            .transact(vec![put(by_digest), put(listed)], &key.application)
            .await?
        {
            None => Ok(()),
            Some(reasons) => {
                let holder = reasons
                    .iter()
                    .filter_map(|r| r.item())
                    .find_map(|item| match item.get("application") {
                        Some(AttributeValue::S(app)) => Some(app.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| key.application.clone());
                Err(LedgerError::Owned {
                    what: Held::Key(key.id.clone()),
                    holder: format!("application `{holder}`"),
                })
            }
        }
    }

    async fn key(&self, digest: &str) -> Result<Option<IssuedKey>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("key#{digest}")))
            .key("sk", s("key"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", &e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let text = |name: &str| match item.get(name) {
            Some(AttributeValue::S(v)) => Some(v.clone()),
            _ => None,
        };
        let corrupt = |reason: &str| LedgerError::Corrupt {
            key: format!("key#{}", key_id(digest)),
            reason: reason.into(),
        };
        Ok(Some(IssuedKey {
            id: text("id").ok_or_else(|| corrupt("no `id`"))?,
            application: text("application").ok_or_else(|| corrupt("no `application`"))?,
            user: text("user"),
            created: match item.get("created") {
                Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt("bad `created`"))?,
                _ => 0,
            },
        }))
    }

    async fn keys(&self, application: &str) -> Result<Vec<IssuedKey>, LedgerError> {
        let mut keys = Vec::new();
        for item in self.partition(app_pk(application), "key#").await? {
            let Some(AttributeValue::S(sk)) = item.get("sk") else {
                continue;
            };
            keys.push(IssuedKey {
                id: sk.trim_start_matches("key#").to_string(),
                application: application.to_string(),
                user: match item.get("user") {
                    Some(AttributeValue::S(u)) => Some(u.clone()),
                    _ => None,
                },
                created: match item.get("created") {
                    Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
                    _ => 0,
                },
            });
        }
        keys.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, application: &str, id: &str) -> Result<bool, LedgerError> {
        let Some(digest) = self
            .string_attribute(app_pk(application), &format!("key#{id}"), "digest", true)
            .await?
        else {
            return Ok(false);
        };
        let delete = |pk: String, sk: String| {
            TransactWriteItem::builder()
                .delete(
                    aws_sdk_dynamodb::types::Delete::builder()
                        .table_name(&self.table)
                        .key("pk", s(pk))
                        .key("sk", s(sk))
                        .build()
                        .expect("table and key are set"),
                )
                .build()
        };
        match self
            .transact(
                vec![
                    delete(format!("key#{digest}"), "key".into()),
                    delete(app_pk(application), format!("key#{id}")),
                ],
                application,
            )
            .await?
        {
            None => Ok(true),
            Some(reasons) => Err(LedgerError::Unavailable(format!(
                "revoking key `{id}` was cancelled: {reasons:?}"
            ))),
        }
    }
}
