//! `bertqa serve`: the HTTP question-answering server.

use std::sync::Arc;

use bertqa::server::{self, AllowedHosts, CorsOrigins, ServerConfig};
use bertqa::{LoadOptions, QaPipeline};
use clap::Args;

use super::{CliError, CliResult, CommonArgs};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    engine: super::EngineArgs,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests handled at once; more are answered 429 at once.
    #[arg(long, default_value_t = 512)]
    max_concurrent_requests: usize,
    /// Most tokens in one model call, as the engine counts them (the fast engine: the sum of
    /// window lengths; the reference models: windows × longest window).
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// Most inputs in one request.
    #[arg(long, default_value_t = 32)]
    max_client_batch_size: usize,
    /// Longest context accepted, in characters.
    #[arg(long, default_value_t = bertqa::pipeline::DEFAULT_MAX_CONTEXT_CHARS)]
    max_context_chars: usize,
    /// Largest request body: bytes, or with a unit (KB, MB = 1000², KiB, MiB = 1024²).
    #[arg(long, default_value = "2MB", value_parser = parse_size)]
    payload_limit: usize,
    /// Longest a request may take (e.g. 60s, 500ms, 2m); longer ones are answered 503.
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    request_timeout: std::time::Duration,
    /// Most windows (model inputs of max_seq_len tokens) the inputs of one request may make;
    /// more are answered 413 before any model work.
    #[arg(long, default_value_t = server::DEFAULT_MAX_WINDOWS_PER_REQUEST)]
    max_windows_per_request: usize,
    /// Longest a connection may take to send a request's head, from its opening or from the
    /// previous response: slow or silent clients, and idle keep-alive connections, are closed
    /// after it.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    header_read_timeout: std::time::Duration,
    /// Connections open at once; further ones wait (in the listen backlog) until one closes.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Also answer requests whose Host header names this host (a name or IP address, any
    /// port); repeat for several, or `*` for any. By default the server answers `localhost` and
    /// loopback addresses, and when bound to another address than loopback, any IP address.
    #[arg(long = "allowed-hosts", value_name = "HOST", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Name the model in /info by the path it was loaded from, not by its folder's name alone.
    #[arg(long)]
    show_paths: bool,
    /// Let pages of this origin call the API from a browser (CORS), e.g.
    /// https://example.com; repeat for several, or `*` for any.
    #[arg(long = "cors-allow-origin", value_name = "ORIGIN")]
    cors_allow_origins: Vec<String>,
    /// Write logs as JSON lines (one object per event) instead of text.
    #[arg(long)]
    json_logs: bool,
    /// Also answer over this document index (made by `bertqa index`) on
    /// `POST /documents/question-answering`. Restart the server after re-indexing.
    #[arg(long)]
    index: Option<std::path::PathBuf>,
}

/// Parses a size such as `2MB`, `512KiB` or `1048576`.
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. 2MB, 512KB or 1048576"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit `{other}`; use B, KB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    let bytes = number * factor;
    if !(1.0..=usize::MAX as f64).contains(&bytes) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes as usize)
}

/// Parses a positive duration such as `60s`, `500ms` or `2m`.
fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 60s, 500ms or 2m"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// How long memory that model calls freed stays mapped before the server returns it to the OS,
/// in ms: calls under load reuse it long before, and an idle server shrinks back after a large
/// request. (`main` keeps freed memory for good, which suits `ask` and `train`.)
const PURGE_DELAY_MS: std::ffi::c_long = 2000;

pub fn run(args: ServeArgs) -> CliResult {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it is not
        // thread-safe, and this runs before the server starts any thread (logging, the thread
        // pools and the runtime are all set up below).
        unsafe { libmimalloc_sys::mi_option_set(crate::MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
    super::init_logging(args.common.verbose, "bertqa=info,warn", args.json_logs);
    // A panic inside a request (a worker thread or a model call) is caught there and answered
    // 500 for that request alone; it is logged here, once, as a log line.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "a request panicked; it is answered 500, the server goes on");
    }));
    super::set_threads(args.common.threads);
    for (name, value) in [
        ("--max-concurrent-requests", args.max_concurrent_requests),
        ("--max-batch-tokens", args.max_batch_tokens),
        ("--max-client-batch-size", args.max_client_batch_size),
        ("--max-context-chars", args.max_context_chars),
        ("--max-windows-per-request", args.max_windows_per_request),
        ("--max-connections", args.max_connections),
    ] {
        if value == 0 {
            return Err(CliError::usage(format!("{name} must be at least 1")));
        }
    }
    let index = args
        .index
        .as_deref()
        .map(super::collection::open_index)
        .transpose()?
        .map(Arc::new);
    let cors_allow_origins = CorsOrigins::parse(&args.cors_allow_origins)
        .map_err(|e| CliError::usage(format!("--cors-allow-origin: {e}")))?;
    // Checked before the model loads; the defaults depend on the address bound, below.
    let unspecified = std::net::Ipv4Addr::UNSPECIFIED.into();
    AllowedHosts::new(unspecified, &args.allowed_hosts)
        .map_err(|e| CliError::usage(format!("--allowed-hosts: {e}")))?;
    let options = LoadOptions {
        hub: args.common.hub(),
        max_context_chars: args.max_context_chars,
        ..LoadOptions::default()
    };
    let options = args.engine.apply(options)?;
    let qa = QaPipeline::load(&args.common.model, &options)?;
    tracing::info!(model = %qa.files().name, model_type = %qa.spec().model_type(), "model loaded");
    let config = ServerConfig {
        max_concurrent_requests: args.max_concurrent_requests,
        max_batch_tokens: args.max_batch_tokens,
        max_client_batch_size: args.max_client_batch_size,
        max_context_chars: args.max_context_chars,
        payload_limit: args.payload_limit,
        index,
        request_timeout: args.request_timeout,
        cors_allow_origins,
        max_windows_per_request: args.max_windows_per_request,
        header_read_timeout: args.header_read_timeout,
        max_connections: args.max_connections,
        allowed_hosts: AllowedHosts::loopback(),
        show_paths: args.show_paths,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError {
            message: format!("cannot start the async runtime: {e}"),
            code: 1,
        })?;
    runtime.block_on(async move {
        let mut config = config;
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .map_err(|e| {
                CliError::usage(format!(
                    "cannot listen on {}:{}: {e}; pick another --host/--port",
                    args.host, args.port
                ))
            })?;
        let addr = listener.local_addr().map_err(|e| CliError {
            message: format!("cannot read the address listened on: {e}"),
            code: 1,
        })?;
        config.allowed_hosts = AllowedHosts::new(addr.ip(), &args.allowed_hosts)
            .map_err(|e| CliError::usage(format!("--allowed-hosts: {e}")))?;
        tracing::info!(%addr, "listening on http://{addr}");
        server::serve(Arc::new(qa), listener, config, server::shutdown_signal())
            .await
            .map_err(|e| CliError {
                message: format!("server failed: {e}"),
                code: 1,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("512KiB"), Ok(524_288));
        assert_eq!(parse_size("1.5kb"), Ok(1_500));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert!(parse_size("2XB").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn timeouts_parse_with_units_and_are_positive() {
        use super::parse_timeout;
        use std::time::Duration;
        assert_eq!(parse_timeout("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("0s").unwrap_err().contains("more than zero"));
        assert!(parse_timeout("60").unwrap_err().contains("e.g. 60s"));
        assert!(parse_timeout("soon").is_err());
    }
}
