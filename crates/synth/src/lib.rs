//! The library behind the `synth` CLI: cost estimates of a spec and usage reports of a deployed
//! stack. Rendering itself lives in the `cfn` crate.

pub mod estimate;
pub mod report;
