//! Tests of the PostgreSQL store beyond the conformance suite.
