//! The `http` executor type (webhook).
