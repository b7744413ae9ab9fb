//! Engine scenarios over real redb files in temp dirs.

mod support;

mod crash;
mod docs;
mod execution;
mod hitl;
mod planning;
mod replan;
