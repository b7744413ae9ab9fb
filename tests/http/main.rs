//! The HTTP API over real sockets: a server on 127.0.0.1:0, a real client and SSE reader,
//! webhook capabilities served by the tests themselves.

#[allow(dead_code)]
#[path = "../common/corpus.rs"]
mod corpus;
#[allow(dead_code)]
#[path = "../llm/fake.rs"]
mod fake;
#[path = "../common/plans.rs"]
mod plans;
mod support;

mod budgets;
mod catalog;
mod cluster;
mod console;
mod corpus_replies;
mod cors;
mod errors;
mod hitl;
mod idempotency;
mod ids;
mod kill;
mod ladder;
mod listing;
mod otel;
mod plan_svg;
mod restart;
mod retention;
mod scenarios;
mod signing;
mod streams;
mod verify;
mod webhook;
