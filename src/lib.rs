//! cedard: an authorization daemon. Cedar policies from files, validated and
//! hot-reloaded, answered over HTTP.
//!
//! The binary (`src/main.rs`) only parses the command line; everything it
//! runs lives here so that tests drive the same code.

pub mod accounts;
pub mod api;
pub mod authz;
pub mod cli;
pub mod entities;
pub mod matrix;
pub mod policy;
pub mod server;
pub mod store;
pub mod suite;
