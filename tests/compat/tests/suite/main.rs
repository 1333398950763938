//! The compatibility suite: every test body runs against keel and a real etcd (see
//! `keel_compat::runner::targets`) and their normalised transcripts must agree.

mod coordination;
mod durability;
mod errors;
mod kv;
mod membership;
mod txn;
