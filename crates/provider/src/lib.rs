//! tokenfence's CloudFormation custom resource provider.
//!
//! `Custom::TokenBudget` writes an application's budget configuration to the ledger (the gateway
//! reads it from there, so limits change with a stack update and no deploy) and manages its AWS
//! Budget; `Custom::TokenAlarm` manages a CloudWatch alarm on the gateway's metrics. The library
//! holds the lifecycle; the Lambda `main` only builds clients and hands events to [`respond::run`].

pub mod aws;
pub mod handler;
pub mod plan;
pub mod props;
pub mod respond;

pub use handler::{Outcome, Provider};
