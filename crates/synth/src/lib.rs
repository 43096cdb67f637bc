//! The library behind the `synth` CLI: cost estimates of a spec, usage reports of a deployed
//! stack, and what an update of rendered templates would do. Rendering lives in the `cfn` crate.

pub mod diff;
pub mod estimate;
pub mod keys;
pub mod prices;
pub mod report;
