//! Answering CloudFormation: always, in time, within 4,096 bytes.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_lambda_events::cloudformation::{
    CloudFormationCustomResourceRequest, CloudFormationCustomResourceResponse,
    CloudFormationCustomResourceResponseStatus,
};
use ledger::Ledger;
use serde_json::Value;

use crate::handler::{
    AlarmOps, BudgetOps, FAILED_ID_PREFIX, Outcome, Provider, RequestView, intended_id,
};

/// CloudFormation rejects responses of 4,096 bytes or more.
pub const MAX_RESPONSE_BYTES: usize = 4_096;
/// The longest one PUT of the answer may take.
pub const PUT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time kept back from the Lambda deadline to send the answer, at most.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// The time the handler may take: the time left less a margin for answering, which is at most
/// [`ANSWER_MARGIN`] and at most a fifth of the time left (a 3 s function must still do its work).
pub fn work_budget(time_left: Duration) -> Duration {
    time_left.saturating_sub(ANSWER_MARGIN.min(time_left / 5))
}

/// Sends the response document to the pre-signed ResponseURL.
pub trait Responder: Send + Sync + 'static {
    /// PUTs `body`, retrying no later than `until` (the Lambda deadline: a frozen sandbox would
    /// resume the retries during another event); an error means the response may not have arrived.
    fn put(
        &self,
        url: &str,
        body: String,
        until: Instant,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// PUT over HTTPS with reqwest, retried on transient failures.
pub struct HttpResponder {
    client: reqwest::Client,
    /// Attempts before giving up.
    pub attempts: u32,
}

impl Default for HttpResponder {
    fn default() -> Self {
        HttpResponder {
            client: reqwest::Client::builder().build().expect("an HTTP client"),
            attempts: 5,
        }
    }
}

impl Responder for HttpResponder {
    async fn put(&self, url: &str, body: String, until: Instant) -> Result<(), String> {
        let mut delay = Duration::from_millis(200);
        let mut last = String::from("no time left before the Lambda deadline");
        for attempt in 1..=self.attempts {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // The pre-signed URL is signed for an empty content type.
            match self
                .client
                .put(url)
                .header("content-type", "")
                .timeout(PUT_TIMEOUT.min(left))
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status().is_client_error() => {
                    return Err(format!("the ResponseURL answered {}", r.status()));
                }
                Ok(r) => last = format!("the ResponseURL answered {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if attempt < self.attempts {
                if Instant::now() + delay >= until {
                    break;
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(last)
    }
}

/// The response document for `outcome`, cut to fit CloudFormation's 4,096-byte limit: the reason
/// is shortened first, then the data dropped.
pub fn response_body(
    request: &CloudFormationCustomResourceRequest<Value, Value>,
    outcome: &Outcome,
) -> String {
    let (stack_id, request_id, logical_id) = match RequestView::of(request) {
        Some(v) => (
            v.stack_id.to_string(),
            v.request_id.to_string(),
            v.logical_id.to_string(),
        ),
        None => Default::default(),
    };
    let mut response = CloudFormationCustomResourceResponse::default();
    response.status = if outcome.success {
        CloudFormationCustomResourceResponseStatus::Success
    } else {
        CloudFormationCustomResourceResponseStatus::Failed
    };
    response.reason = outcome.reason.clone();
    response.physical_resource_id = outcome.physical_id.clone();
    response.stack_id = stack_id;
    response.request_id = request_id;
    response.logical_resource_id = logical_id;
    response.data = outcome.data.clone().into_iter().collect();
    let mut body = serde_json::to_string(&response).expect("a response serializes");
    // First shorten the reason (keeping its start, which names the property), then drop the data.
    if body.len() >= MAX_RESPONSE_BYTES
        && let Some(reason) = response.reason.as_mut()
    {
        let excess = body.len() + 16 - MAX_RESPONSE_BYTES;
        let mut cut = reason
            .len()
            .saturating_sub(excess)
            .max(64)
            .min(reason.len());
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str(" [...]");
        body = serde_json::to_string(&response).expect("a response serializes");
    }
    if body.len() >= MAX_RESPONSE_BYTES {
        response.data.clear();
        body = serde_json::to_string(&response).expect("a response serializes");
    }
    body
}

/// Handles one Lambda event: parses it, runs the handler with a deadline and panic guard, and
/// always PUTs an answer to the ResponseURL when there is one.
pub async fn run<L: Ledger, A: AlarmOps, G: BudgetOps, R: Responder>(
    provider: std::sync::Arc<Provider<L, A, G>>,
    responder: &R,
    event: Value,
    time_left: Duration,
) -> Result<(), String> {
    let until = Instant::now() + time_left;
    let request: CloudFormationCustomResourceRequest<Value, Value> =
        match serde_json::from_value(event.clone()) {
            Ok(r) => r,
            Err(e) => return answer_malformed(responder, &event, &e.to_string(), until).await,
        };
    let budget = work_budget(time_left);
    tracing::info!(
        time_left_ms = time_left.as_millis() as u64,
        "handling a custom resource request"
    );
    let mut task = {
        let provider = std::sync::Arc::clone(&provider);
        let request = request.clone();
        tokio::spawn(async move { provider.handle(&request).await })
    };
    let outcome = match tokio::time::timeout(budget, &mut task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(join)) => failed_outcome(
            &request,
            if join.is_panic() {
                "internal error: the provider panicked; nothing was left half-created on purpose, retry the operation"
            } else {
                "internal error: the handler was cancelled"
            },
        ),
        Err(_) => {
            // Stop the work: a frozen Lambda would otherwise resume it during the next event,
            // possibly after CloudFormation's cleanup of this one.
            task.abort();
            failed_outcome(
                &request,
                "timed out before the Lambda deadline; retry the operation",
            )
        }
    };
    let Some(url) = RequestView::of(&request).map(|v| v.response_url.to_string()) else {
        return answer_malformed(responder, &event, "unsupported request type", until).await;
    };
    tracing::info!(success = outcome.success, physical_id = %outcome.physical_id, reason = outcome.reason.as_deref().unwrap_or(""), "answering CloudFormation");
    responder
        .put(&url, response_body(&request, &outcome), until)
        .await
}

fn failed_outcome(
    request: &CloudFormationCustomResourceRequest<Value, Value>,
    reason: &str,
) -> Outcome {
    let physical = match RequestView::of(request) {
        Some(RequestView {
            physical_id: Some(id),
            ..
        }) => id.to_string(),
        // A Create cut short may have written part of its resource: answer with the ID of what it
        // was creating, so that CloudFormation's rollback Delete removes whatever exists.
        Some(v) => intended_id(v.resource_type, v.props)
            .unwrap_or_else(|| format!("{FAILED_ID_PREFIX}{}", v.request_id)),
        None => String::new(),
    };
    Outcome {
        success: false,
        reason: Some(reason.to_string()),
        physical_id: physical,
        data: Default::default(),
    }
}

/// An event that is not a custom resource request still gets an answer if it names a ResponseURL.
async fn answer_malformed<R: Responder>(
    responder: &R,
    event: &Value,
    error: &str,
    until: Instant,
) -> Result<(), String> {
    let field = |k: &str| event.get(k).and_then(Value::as_str).map(str::to_string);
    let Some(url) = field("ResponseURL") else {
        return Err(format!(
            "not a CloudFormation custom resource request, and no ResponseURL to answer: {error}"
        ));
    };
    let request_id = field("RequestId").unwrap_or_default();
    let physical =
        field("PhysicalResourceId").unwrap_or_else(|| format!("{FAILED_ID_PREFIX}{request_id}"));
    let body = serde_json::json!({
        "Status": "FAILED",
        "Reason": format!("malformed request: {error}").chars().take(1_000).collect::<String>(),
        "PhysicalResourceId": physical,
        "StackId": field("StackId").unwrap_or_default(),
        "RequestId": request_id,
        "LogicalResourceId": field("LogicalResourceId").unwrap_or_default(),
        "NoEcho": false,
        "Data": {}
    });
    responder.put(&url, body.to_string(), until).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_deadlines_keep_most_of_their_time_for_work() {
        assert_eq!(
            work_budget(Duration::from_secs(300)),
            Duration::from_secs(295)
        );
        assert_eq!(
            work_budget(Duration::from_secs(3)),
            Duration::from_millis(2_400)
        );
        assert_eq!(work_budget(Duration::ZERO), Duration::ZERO);
    }
}
