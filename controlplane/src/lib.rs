//! Sluice's control plane: `sluice-control` keeps the desired config of a fleet of `sluice`
//! data-plane nodes — a TOML file or folder, usually a git checkout — versions it, pushes each
//! version to every node over a gRPC Watch stream and records each node's ACK or NACK;
//! `sluicectl` is the operator's CLI over the same API (`proto/`).
//!
//! The pieces: [`source`] reads a config path into one document and names its git commit;
//! [`state`] is the state as pure values and functions (versions, overlays, the fleet);
//! [`store`] keeps it in SQLite in the state directory; [`catalog`] reads the backends and
//! pools a document declares; [`keys`] makes and revokes subscription keys; [`auth`] checks the operator and node bearer tokens;
//! [`usage`] stores the nodes' usage telemetry and answers queries and the live view;
//! [`service`] is the gRPC services over it all; [`server`] runs them, with [`admin`]
//! (metrics and health) beside; [`ctl`] is `sluicectl`.

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod ctl;
pub mod keys;
pub mod server;
pub mod service;
pub mod source;
pub mod state;
pub mod store;
pub mod usage;
