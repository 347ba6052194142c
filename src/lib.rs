//! gapmeter measures the domain gap between image datasets. See README.md and
//! docs/architecture.md.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod content;
pub mod features;
#[doc(hidden)]
pub mod fuzzing;
pub mod imaging;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod reduce;
pub mod score;
pub mod store;
pub mod util;
pub mod worker;
