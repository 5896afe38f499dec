//! vlmtest: declarative regression tests for vision-language models, run by `cargo test`.
//!
//! Data flows one way: [`config`] → [`plan`] → [`run`] (through a [`backend`]) → [`verdict`]s →
//! [`report`]. The [`harness`] maps the plan to libtest trials; [`cli`] is the `vlmtest` command.

pub mod backend;
pub mod cache;
pub mod cli;
pub mod compare;
pub mod config;
pub mod error;
pub mod fingerprint;
pub mod harness;
pub mod interrupt;
pub mod kinds;
pub mod machine;
pub mod plan;
pub mod progress;
pub mod report;
pub mod resample;
pub mod run;
pub mod score;
pub mod serve;
pub mod snapshot;
pub mod verdict;
