//! The library snippet of README.md, compiled with the examples.
//!
//! ```sh
//! cargo run --example library
//! ```

use std::sync::Arc;

use flexrun::{Durability, Engine, RedbStore, RunEnvelope, demo};

async fn run_one() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(RedbStore::open("flexrun.redb", Durability::Fsync)?);
    let engine = Engine::open(demo::config(store)).await?; // recovers unfinished runs
    let text = std::fs::read_to_string("examples/tagline.json")?;
    let run = engine
        .submit(serde_json::from_str::<RunEnvelope>(&text)?)
        .await?;
    let result = engine.wait(run).await?; // status, output, error
    println!("{:?}: {:?}", result.status, result.output);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run_one().await
}
