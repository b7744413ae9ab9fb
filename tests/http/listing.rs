//! `GET /v1/runs`: pages newest first with a stable cursor, filters by status, metadata and
//! creation time; node views carry their times.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Options, Server, copy_envelope, temp_store};

fn ids(list: &Value) -> Vec<String> {
    list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["runId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_come_in_pages_newest_first_and_filter_by_metadata_status_and_time() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let mut created = Vec::new();
    for i in 0..5 {
        let mut envelope = copy_envelope(&["copyVariants"], json!(null));
        envelope["metadata"] = json!({"correlationId": format!("order-{}", i % 2), "shard": i});
        let run = server.submit(envelope).await;
        server.events(run, None).await.rest().await;
        created.push(run.to_string());
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let (status, first) = server.get("/v1/runs?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(ids(&first), newest_first[..2]);
    let cursor = first["nextCursor"].as_str().unwrap().to_owned();
    // A run created between two page reads does not shift the pages after the cursor.
    let late = server
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await;
    let (_, second) = server
        .get(&format!("/v1/runs?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(ids(&second), newest_first[2..4]);
    let cursor = second["nextCursor"].as_str().unwrap();
    let (_, last) = server
        .get(&format!("/v1/runs?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(ids(&last), newest_first[4..]);
    assert!(last.get("nextCursor").is_none(), "{last}");
    let (_, all) = server.get("/v1/runs").await;
    assert_eq!(ids(&all)[0], late.to_string());

    let (_, odd) = server.get("/v1/runs?correlationId=order-1").await;
    assert_eq!(ids(&odd), [created[3].clone(), created[1].clone()]);
    let (_, shard) = server.get("/v1/runs?metadata.shard=2").await;
    assert_eq!(
        ids(&shard),
        [created[2].clone()],
        "numbers match their JSON text"
    );
    let (_, both) = server
        .get("/v1/runs?metadata.correlationId=order-0&metadata.shard=4&status=completed")
        .await;
    assert_eq!(ids(&both), [created[4].clone()]);

    let created_at = |i: usize| {
        all["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["runId"] == created[i].as_str())
            .unwrap()["createdAt"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (status, window) = server
        .get(&format!(
            "/v1/runs?createdAfter={}&createdBefore={}",
            created_at(0),
            created_at(4)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{window}");
    let got = ids(&window);
    assert!(
        got.contains(&created[0]) && !got.contains(&created[4]),
        "{window}"
    );

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("limit=1001", "limit"),
        ("cursor=not-a-run", "cursor"),
        ("owner=me", "owner"),
    ] {
        let (status, body) = server.get(&format!("/v1/runs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["details"]["field"], field, "{query}: {body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_views_carry_when_they_started_and_ended() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let run = server
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await;
    server.events(run, None).await.rest().await;
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    let nodes = detail["nodes"].as_array().unwrap();
    assert!(!nodes.is_empty());
    for node in nodes {
        let started = node["startedAt"].as_str().expect("startedAt");
        let ended = node["endedAt"].as_str().expect("endedAt");
        assert!(started <= ended, "{node}");
        assert!(started >= detail["createdAt"].as_str().unwrap(), "{node}");
    }
    server.stop().await;
}
