//! gapmeter measures the domain gap between image datasets. See README.md and
//! docs/architecture.md.

pub mod cli;
pub mod features;
pub mod imaging;
pub mod ingest;
pub mod metrics;
pub mod score;
pub mod util;
