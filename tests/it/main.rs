//! cedard's integration tests: the real server on a real socket, with its own
//! temporary copy of the policy pack.

mod accounts;
mod architecture;
mod auth;
mod authzen;
mod conformance;
mod console;
mod crash;
mod decisions;
mod entity_decoder;
mod full_disk;
mod hardening_directory;
mod hardening_reload;
mod hardening_store;
mod impact;
mod limits;
mod matrix;
mod model;
mod observe;
mod openapi;
mod pg;
mod pg_tls;
mod prove;
mod prove_corpus;
mod proxy;
mod reload;
mod replica_faults;
mod replicas;
mod request_validation;
mod store_contract;
mod suite;
mod support;
mod tokens;
