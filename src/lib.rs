//! promptreg: a prompt version registry for fleets of LLM agents.
//!
//! Modules, in reading order:
//! - [`domain`]: prompt names, labels, content and its canonical digest,
//!   the template syntax, rollback semantics. Plain types, no I/O.
//! - [`store`]: the registry's records over a key-value `Engine` (sled, in
//!   `store/sled/` only); one change-log record per revision and the
//!   indexes derived from it, written in one atomic guarded batch.
//! - [`provenance`]: signing keys, signed messages, the audit ledger hash
//!   chain.
//! - [`registry`]: the use cases; one writer lock assigns revisions, group
//!   commit makes them durable before anyone is answered.
//! - [`grpc`]: the only module that knows protobuf: generated code,
//!   conversions, the thin service handlers.
//! - [`server`]: `run(listener, config, shutdown)`: the gRPC server with
//!   health and reflection.
//! - [`telemetry`]: logs, OpenTelemetry traces, Prometheus metrics, the
//!   per-RPC span and metrics layer.
//! - [`cli`]: the `promptreg` command line, server and client subcommands.
//!
//! `tests/architecture.rs` checks which of these may import which.

pub mod cli;
pub mod domain;
pub mod grpc;
pub mod provenance;
pub mod registry;
pub mod server;
pub mod store;
pub mod telemetry;
// Test-only code (fuzz harnesses and seeds) for fuzz/ and tests/; not part
// of the API and not in the default build (the `testkit` feature, on for
// tests only).
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testing;
pub mod time;
