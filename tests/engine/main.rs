//! Engine scenarios over real redb files in temp dirs.

#[path = "../common/plans.rs"]
mod plans;
mod support;

mod crash;
mod docs;
mod execution;
mod hitl;
mod planning;
mod replan;
