//! Logging setup: `tracing` with an env filter, plain or JSON lines, coloured only when
//! stderr is a terminal; with the `otlp` feature, also OpenTelemetry traces over OTLP.
//!
//! Header values, init payloads and variables are never logged: security contexts appear
//! as an 8-hex-digit prefix of their hash, payload types print only their length.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// The log filter: `SUBPLEX_LOG`, then `RUST_LOG`, default `info`.
fn log_filter() -> EnvFilter {
    EnvFilter::try_from_env("SUBPLEX_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber. The filter comes from `SUBPLEX_LOG` (then `RUST_LOG`),
/// default `info`.
#[cfg(not(feature = "otlp"))]
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file, a pipe or journald would
        // otherwise store the escape sequences.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Installs the global subscriber: logs as without the feature, and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, one span
/// per client operation exported over OTLP/HTTP. The log filter does not apply to the
/// spans, and theirs does not apply to the logs.
#[cfg(feature = "otlp")]
pub fn init(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Plain => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let provider = otlp::provider_from_env();
    let spans = provider.as_ref().map(otlp::operation_spans);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(log_filter()))
        .with(spans)
        .try_init();
    if let Some(provider) = provider {
        let _ = otlp::PROVIDER.set(provider);
    }
}

/// Sends the spans not exported yet (with the `otlp` feature); call before exiting.
pub fn shutdown() {
    #[cfg(feature = "otlp")]
    if let Some(provider) = otlp::PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

#[cfg(feature = "otlp")]
pub use otlp::operation_spans;

#[cfg(feature = "otlp")]
mod otlp {
    use std::sync::OnceLock;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing::Subscriber;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::Layer;

    use crate::trace::OPERATION_TARGET;

    /// The provider `init` installed, for [`super::shutdown`].
    pub(super) static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// An OTLP/HTTP (protobuf) exporter configured by the standard `OTEL_*` variables,
    /// batching in its own thread; `None` when no endpoint is set or it cannot be built.
    pub(super) fn provider_from_env() -> Option<SdkTracerProvider> {
        let configured = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var_os(name).is_some());
        if !configured {
            return None;
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => exporter,
            Err(err) => {
                eprintln!("subplex: OTLP trace export is off: {err}");
                return None;
            }
        };
        let resource = Resource::builder();
        // OTEL_SERVICE_NAME, when set, names the service; otherwise "subplex".
        let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
            resource
        } else {
            resource.with_service_name("subplex")
        };
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        )
    }

    /// The layer that turns operation spans (and only those) into OpenTelemetry spans of
    /// `provider`.
    pub fn operation_spans<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync
    where
        S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("subplex"))
            .with_filter(Targets::new().with_target(OPERATION_TARGET, tracing::Level::INFO))
    }
}
