//! Sluice's integration tests: one binary (fast to link), one module per concern.

mod atomic;
mod cancel;
mod catalogs;
mod cli;
mod concurrency;
mod coordinators;
mod delta;
mod events;
mod faults;
mod fencing;
mod hardening;
mod interop;
mod kill;
mod memory;
mod overwrite;
mod postgres;
mod recovery;
mod repl;
mod rest;
mod scheduler;
mod serve;
mod shards;
mod slt;
mod steps;
mod support;
mod time_travel;
