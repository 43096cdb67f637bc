//! The budget core of tokenfence.
//!
//! Everything here is pure arithmetic over integers: calendar windows in UTC, limits in tokens and
//! micro-USD, the price book, worst-case reservations and their settlement, conservative input
//! token estimation and burn-rate forecasts. No I/O, no async, no AWS: the ledger, the Lambdas and
//! the CLI build on it.

pub mod config;
mod error;
pub mod estimate;
pub mod forecast;
mod limit;
mod money;
pub mod price;
mod usage;
mod window;

pub use error::BudgetError;
pub use limit::{Exceeded, Limit, LimitMetric};
pub use money::MicroUsd;
pub use price::{Price, PriceBook, PriceText, PriceTier, TierPrices};
pub use usage::{Charge, Usage};
pub use window::{Window, WindowInstance};
