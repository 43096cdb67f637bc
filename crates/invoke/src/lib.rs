//! tokenfence's enforcing gateway.
//!
//! Every Bedrock runtime request (Converse, ConverseStream, InvokeModel, InvokeModelWithResponseStream)
//! reserves its worst case in every window of its application before
//! Bedrock is called, and is settled afterwards: to its actual usage, refunded when Bedrock refused
//! it, at the worst case when Bedrock may have billed a generation whose usage is unknown. One core
//! ([`gateway::Gateway`]) serves three fronts: API Gateway proxy events and SQS events in Lambda
//! ([`lambda`]), and `invoke serve` ([`http`]); the Step Functions Express engine runs it as two
//! workflow steps ([`step`]).

pub mod bedrock;
pub mod error;
pub mod gateway;
pub mod http;
pub mod lambda;
pub mod metrics;
pub mod ops;
pub mod settings;
pub mod step;

pub use error::Error;
pub use gateway::{Front, Gateway, LedgerFailurePolicy, Outcome, Reply, Request, Settings};
