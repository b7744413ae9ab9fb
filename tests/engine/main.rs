//! Engine scenarios over real redb files in temp dirs.

mod support;

mod crash;
mod hitl;
mod planning;
mod replan;
