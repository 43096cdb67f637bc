//! The provider Lambda: reads its configuration, builds clients once, serves events.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger::DynamoLedger;
use provider::aws::{AwsBudgets, CloudWatchAlarms};
use provider::respond::{HttpResponder, run};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .init();
    let table = std::env::var("TOKENFENCE_TABLE").map_err(|_| "`TOKENFENCE_TABLE` is not set")?;
    let name = std::env::var("TOKENFENCE_NAME").map_err(|_| "`TOKENFENCE_NAME` is not set")?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let provider = Arc::new(provider::Provider {
        ledger: DynamoLedger::new(aws_sdk_dynamodb::Client::new(&aws), table),
        alarms: CloudWatchAlarms {
            client: aws_sdk_cloudwatch::Client::new(&aws),
        },
        budgets: AwsBudgets {
            client: aws_sdk_budgets::Client::new(&aws),
        },
        name,
        alert_topic: std::env::var("TOKENFENCE_ALERT_TOPIC").ok(),
    });
    let responder = Arc::new(HttpResponder::default());
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let provider = Arc::clone(&provider);
            let responder = Arc::clone(&responder);
            async move {
                let deadline_ms = event.context.deadline;
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let time_left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
                run(provider, responder.as_ref(), event.payload, time_left).await
            }
        },
    ))
    .await
}
