//! Engine scenarios over real redb files in temp dirs.

#[allow(dead_code)]
#[path = "../common/corpus.rs"]
mod corpus;
#[path = "../common/plans.rs"]
mod plans;
mod support;

mod convergence;
mod corpus_replies;
mod crash;
mod docs;
mod errors;
mod execution;
mod executors;
mod hitl;
mod idempotency;
mod ids;
mod modules;
mod observe;
mod planning;
mod policies;
mod replan;
mod retention;
mod timeout;
