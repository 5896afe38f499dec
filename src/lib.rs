//! vlmtest: declarative regression tests for vision-language models, run by `cargo test`.
//!
//! Data flows one way: [`config`] → [`plan`] → [`run`] (through a [`backend`]) → [`verdict`]s →
//! [`report`]. The [`harness`] maps the plan to libtest trials; [`cli`] is the `vlmtest` command.

#![warn(unreachable_pub)]

pub mod backend;
pub(crate) mod cache;
pub mod cli;
pub(crate) mod compare;
pub mod config;
pub(crate) mod error;
pub(crate) mod fingerprint;
pub mod harness;
pub(crate) mod interrupt;
pub mod kinds;
pub mod machine;
pub(crate) mod plan;
pub(crate) mod progress;
pub(crate) mod report;
pub mod resample;
pub(crate) mod run;
pub mod score;
pub(crate) mod serve;
pub mod snapshot;
pub(crate) mod verdict;
