//! Idempotency keys through the library: `Engine::submit` with a key, and expiry.

use std::time::Duration;

use flexrun::{EngineError, IdempotencyKey, Submission};
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_submission_is_created_once_until_its_key_expires() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path().join("flexrun.redb"), None, |mut c| {
        c.idempotency_ttl = Duration::from_millis(300);
        c
    })
    .await;
    let key = IdempotencyKey::new("order-42").unwrap();
    let envelope = || copy_envelope(&["copyVariants"], json!({}));
    let submit = |key: &IdempotencyKey| Submission::new(envelope()).idempotency_key(key.clone());

    let first = engine.submit_request(submit(&key)).await.unwrap();
    assert!(!first.replayed);
    let again = engine.submit_request(submit(&key)).await.unwrap();
    assert_eq!((again.run_id, again.replayed), (first.run_id, true));
    assert_eq!(engine.submit(submit(&key)).await.unwrap(), first.run_id);

    let mut other = envelope();
    other.objective = "something else".to_owned();
    let refused = engine
        .submit(Submission::new(other).idempotency_key(key.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, EngineError::IdempotencyKeyReused { key } if key == "order-42"),
        "{refused}"
    );
    engine.wait(first.run_id).await.unwrap();

    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = engine.submit_request(submit(&key)).await.unwrap();
    assert!(!later.replayed, "an expired key is a new request");
    assert_ne!(later.run_id, first.run_id);
    assert_eq!(engine.store().list_runs(None).unwrap().len(), 2);
    let record = engine.store().request("order-42").unwrap().unwrap();
    assert_eq!(record.run_id, later.run_id, "the key now names the new run");
    engine.wait(later.run_id).await.unwrap();
}
