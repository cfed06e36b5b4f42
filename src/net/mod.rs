//! Everything that crosses the network.
//!
//! - `protocol`: the JSON shapes both sides speak, and the documented limits (may use `core`);
//! - `auth`: peer identity, cluster id and request signatures (may use `core`);
//! - `peer`: the HTTP client of the peer protocol, with typed errors (may use `core`, `error`,
//!   `protocol`, `auth`);
//! - `client`: the typed client library of the public API (may use `core`, `protocol`);
//! - `api`: the HTTP edge, axum routes and JSON errors (may use anything below it: `core`,
//!   `error`, `protocol`, `auth`, `node`);
//! - `page`: the live cluster page and `GET /decisions`, part of the HTTP edge (may use what
//!   `api` uses, and `api`'s error);
//! - `server`: the connection layer under the app (may use `protocol`);
//! - `exporter`: `GET /metrics`, the Prometheus exposition (may use `node`, like `api`);
//! - `openapi`: `GET /openapi.json`, generated from `api`'s handlers and the protocol types.
//!
//! Lower modules of `net` never use `node` or `sync`; only `api` sits above the node.

pub mod api;
pub mod auth;
pub mod client;
pub mod exporter;
pub mod openapi;
pub mod page;
pub mod peer;
pub mod protocol;
pub mod server;
