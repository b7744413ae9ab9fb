//! OpenTelemetry for `flexrun serve --otlp-endpoint`: the engine's `tracing` spans (`run`,
//! `planner_call`, `node`) exported over OTLP/HTTP (protobuf) by a batch span processor, and
//! the W3C `traceparent` hooks of `flexrun::telemetry` backed by the trace-context propagator.
//! Off unless `--otlp-endpoint` is given. See `docs/TELEMETRY.md`.

use std::collections::HashMap;

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// What is exported: the engine's spans (and any other `flexrun` span at `info` or above),
/// whatever `FLEXRUN_LOG` lets the log print.
const EXPORTED: &str = "flexrun=info";

/// The OTLP/HTTP traces URL for `endpoint`: a collector's base URL
/// (`http://127.0.0.1:4318`) gets the standard `/v1/traces` path; a URL ending in it is used
/// as given.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The tracer provider (to shut down on exit) and the subscriber layer that feeds it.
///
/// # Errors
/// When the exporter cannot be built (an endpoint that is not a URL).
pub(crate) fn layer<S>(
    endpoint: &str,
    service_name: &str,
) -> anyhow::Result<(SdkTracerProvider, impl Layer<S>)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    // The exporter's blocking reqwest client is built with rustls over ring, like every
    // other client of the binary; the provider must be installed first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .build()
        .with_context(|| format!("building the OTLP exporter for {endpoint}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("flexrun");
    let filter: tracing_subscriber::EnvFilter = EXPORTED.parse()?;
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter);
    flexrun::telemetry::install(flexrun::telemetry::TraceHooks {
        set_parent,
        traceparent,
    });
    Ok((provider, layer))
}

/// Parents `span` on the remote span a `traceparent` names (validated by the engine).
fn set_parent(span: &Span, traceparent: &str) {
    let carrier = HashMap::from([(
        flexrun::telemetry::TRACEPARENT.to_owned(),
        traceparent.to_owned(),
    )]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = %e, "the run span's parent was not set");
    }
}

/// The `traceparent` naming `span`, for an outgoing request made inside it.
fn traceparent(span: &Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(flexrun::telemetry::TRACEPARENT)
}

/// Exports what is still queued and stops the exporter; run on graceful exit.
pub(crate) async fn shutdown(provider: SdkTracerProvider) {
    let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    match stopped {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: OpenTelemetry shutdown: {e}"),
        Err(e) => eprintln!("warning: OpenTelemetry shutdown: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn a_base_url_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
