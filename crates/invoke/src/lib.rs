//! tokenfence's enforcing gateway.
//!
//! Every Converse request reserves its worst case in every window of its application before
//! Bedrock is called, and is settled to its actual usage (or refunded) afterwards. One core
//! ([`gateway::Gateway`]) serves three fronts: API Gateway proxy events and SQS events in Lambda
//! ([`lambda`]), and `invoke serve` ([`http`]); the Step Functions Express engine runs it as two
//! workflow steps ([`step`]).

pub mod bedrock;
pub mod gateway;
pub mod http;
pub mod lambda;
pub mod metrics;
pub mod settings;
pub mod step;

pub use gateway::{Front, Gateway, LedgerFailurePolicy, Outcome, Reply, Settings};
