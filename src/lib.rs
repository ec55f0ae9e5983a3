//! cedard: an authorization daemon. Cedar policies from files, validated and
//! hot-reloaded, answered over HTTP, with the accounts, members and invites
//! those answers depend on.
//!
//! The binary (`src/main.rs`) only parses the command line; everything it
//! runs lives here so that tests drive the same code.

pub mod accounts;
pub mod audit;
pub mod authz;
pub mod cli;
pub mod clock;
pub mod code;
pub mod config;
pub mod facts;
pub mod fit;
pub mod http;
pub mod identity;
pub mod impact;
pub mod interop;
pub mod keys;
pub mod matrix;
pub mod model;
pub mod pdp;
pub mod policy;
pub mod prove;
pub mod serve;
pub mod server;
pub mod store;
pub mod suite;
