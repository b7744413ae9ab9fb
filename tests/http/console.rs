//! The run console: its files as served, and the whole page in headless Chromium against real
//! `flexrun serve` processes (tests/browser/console.mjs; scripts/setup-browser.sh installs
//! Debian's chromium and playwright-core, scripts/test.sh runs it first).

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;

use crate::support::{Options, Server, client, temp_store};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_without_a_token_and_locked_to_its_own_origin() {
    let (_dir, path) = temp_store();
    let mut options = Options::default();
    options.config.auth_token = Some("console-token".to_owned());
    let server = Server::start(path, options).await;
    let http = client();
    for (route, mime, marker) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script src=\"/console/app.js\"",
        ),
        (
            "/console/",
            "text/html; charset=utf-8",
            "<title>flexrun console</title>",
        ),
        (
            "/console/app.js",
            "text/javascript; charset=utf-8",
            "class RunPage",
        ),
        (
            "/console/app.css",
            "text/css; charset=utf-8",
            ".flexrun-plan .node.state-done",
        ),
    ] {
        let response = http.get(server.url(route)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{route}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], mime, "{route}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{route}");
        if mime.starts_with("text/html") {
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("script-src 'self'"), "{csp}");
            assert!(csp.contains("connect-src 'self'"), "{csp}");
            assert!(!csp.contains("unsafe-eval"), "{csp}");
        }
        let body = response.text().await.unwrap();
        assert!(body.contains(marker), "{route} lacks {marker:?}");
        // Offline: nothing is loaded from another host.
        assert!(
            !body.contains("https://"),
            "{route} refers to another origin"
        );
    }
    // The data behind it still needs the token.
    let listed = http.get(server.url("/v1/runs")).send().await.unwrap();
    assert_eq!(listed.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

/// Where scripts/setup-browser.sh put playwright-core (or `FLEXRUN_BROWSER_DIR`).
fn browser_dir() -> PathBuf {
    let dir = std::env::var_os("FLEXRUN_BROWSER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target/browser"));
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .exists(),
        "{} has no playwright-core: run scripts/setup-browser.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

#[test]
fn the_console_follows_runs_live_in_headless_chromium() {
    let artifacts = manifest_dir().join("target/browser-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    let output = Command::new("node")
        .arg(manifest_dir().join("tests/browser/console.mjs"))
        .env("FLEXRUN_BIN", env!("CARGO_BIN_EXE_flexrun"))
        .env("FLEXRUN_ROOT", manifest_dir())
        .env("FLEXRUN_BROWSER_DIR", browser_dir())
        .env("FLEXRUN_ARTIFACTS", &artifacts)
        .output()
        .expect("node runs (Node.js 20 or later)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    // The screenshots are kept for whoever reads the run: target/browser-artifacts/*.png.
    let shots = std::fs::read_dir(&artifacts)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png"))
        })
        .count();
    assert!(
        shots >= 10,
        "{shots} screenshots in {}",
        artifacts.display()
    );
}
