//! The shared HTTP client setup: rustls with the ring provider, installed once.

use std::sync::Once;

static PROVIDER: Once = Once::new();

/// A `reqwest` client builder with the TLS provider installed (idempotent).
pub fn client_builder() -> reqwest::ClientBuilder {
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

#[cfg(test)]
mod tests {
    #[test]
    fn builds_a_client_twice() {
        assert!(super::client_builder().build().is_ok());
        assert!(super::client_builder().build().is_ok());
    }
}
