//! cedard's integration tests: the real server on a real socket, with its own
//! temporary copy of the policy pack.

mod support;
mod decisions;
mod reload;
