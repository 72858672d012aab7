//! What a simulation produces for people and programs: the [`model`] of a run's results, a
//! terminal [`table`], `summary.json`, and an [`html`] report with inline SVG plots ([`svg`]).
//!
//! The simulator fills a [`model::RunReport`]; everything here only renders it.

pub mod html;
pub mod model;
pub mod svg;
pub mod table;

pub use model::*;
