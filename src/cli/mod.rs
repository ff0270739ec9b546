//! Command-line interface: argument parsing and dispatch. Each subcommand lives in its own module.

mod ask;
mod collection;
mod eval;
mod index;
mod json_files;
mod jsonl;
mod output;
mod serve;
mod train;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Extractive question answering with BERT-family models.
#[derive(Parser, Debug)]
#[command(name = "bertqa", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Answer questions about a passage (or a JSONL file of them).
    Ask(ask::AskArgs),
    /// Answer every question of a SQuAD file and score the answers (exact match, F1).
    Eval(eval::EvalArgs),
    /// Build or extend a BM25 index of documents, for `ask --index` and `eval --index`.
    Index(index::IndexArgs),
    /// Serve question answering over HTTP, batching requests dynamically.
    Serve(serve::ServeArgs),
    /// Fine-tune a model for extractive QA on SQuAD-format data.
    Train(train::TrainArgs),
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Model directory or Hugging Face Hub id.
    #[arg(long, short = 'm', default_value = bertqa::DEFAULT_MODEL, env = "BERTQA_MODEL")]
    pub model: String,
    /// Never touch the network: use the local directory or the HF cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
    /// Worker threads for the model (default: all cores).
    #[arg(long, value_parser = parse_thread_count)]
    pub threads: Option<usize>,
    /// Log more (-v: debug, -vv: trace); RUST_LOG also works.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl CommonArgs {
    /// Applies threads and logging; call once before any model work.
    pub fn init(&self) {
        init_logging(self.verbose, "warn", false);
        set_threads(self.threads);
    }

    /// Hub options from the flags.
    pub fn hub(&self) -> bertqa::HubOptions {
        bertqa::HubOptions {
            offline: self.offline,
            revision: self.revision.clone(),
        }
    }
}

/// How the model runs: engine and precision (ask, eval, serve).
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Quantize the encoder's linear layers. `int8` is about 1.5–2× as fast as f32 on AVX2 CPUs
    /// and 2–2.5× with AVX-512 VNNI; answers may differ slightly from transformers', which f32
    /// matches. Every architecture runs it on the fast engine; a model variant the fast engine
    /// does not cover is refused with a message.
    #[arg(long, value_enum, default_value_t = Quantize::None)]
    pub quantize: Quantize,
    /// Run the reference models (the code that trains) instead of the fast engine.
    #[arg(long)]
    pub reference_engine: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Where the model runs and in which floating-point type (ask, eval, serve, train).
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where the model runs: `cpu`, `cuda` (GPU 0) or `cuda:N`. GPUs run the reference models
    /// and need a build with `--features cuda`.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: bertqa::DeviceChoice,
    /// Floating-point type on a GPU: `f32` (the CPU's answers), `bf16` or `f16`. In `train`,
    /// `bf16` is mixed precision: bf16 products, f32 master weights.
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16")]
    pub dtype: bertqa::FloatType,
}

impl DeviceArgs {
    /// Opens the device; refuses reduced precision on the CPU before anything loads.
    pub fn open(&self) -> CliResult<candle_core::Device> {
        let device = self.device.open()?;
        self.dtype.check_device(&device)?;
        Ok(device)
    }
}

/// Values of `--quantize`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantize {
    /// f32 weights.
    None,
    /// int8 weights per output channel, int8 activations per row.
    Int8,
}

impl EngineArgs {
    /// Sets the engine, precision and device of `options`; fails when the device cannot be
    /// used.
    pub fn apply(&self, options: bertqa::LoadOptions) -> CliResult<bertqa::LoadOptions> {
        Ok(bertqa::LoadOptions {
            device: self.device.open()?,
            dtype: self.device.dtype,
            engine: if self.reference_engine {
                bertqa::EngineChoice::Reference
            } else {
                bertqa::EngineChoice::Auto
            },
            precision: match self.quantize {
                Quantize::None => bertqa::Precision::F32,
                Quantize::Int8 => bertqa::Precision::Int8,
            },
            ..options
        })
    }
}

/// `--threads`: a whole number of at least 1.
fn parse_thread_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (leave --threads out to use every core)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a whole number of threads")),
    }
}

/// Starts the compute thread pool (candle/gemm use rayon), of `threads` threads (default: one
/// per core), whose threads flush subnormal floats (see `bertqa::fpenv`).
pub fn set_threads(threads: Option<usize>) {
    let threads = threads.filter(|&n| n > 0);
    if let Some(n) = threads {
        // Read by candle's kernels; set before any worker thread starts.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if let Err(e) = bertqa::fpenv::init_global_pool(threads) {
        tracing::debug!(error = %e, "compute thread pool already running");
    }
}

/// Logs to stderr, with colours only when stderr is a terminal. `quiet` is the filter without
/// `-v` (`RUST_LOG` overrides it); `json` writes one JSON object per line.
pub fn init_logging(verbose: u8, quiet: &str, json: bool) {
    let default = match verbose {
        0 => quiet,
        1 => "bertqa=debug,info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// An error for the user: message and exit code (2 for bad input, 1 otherwise).
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    /// Bad input (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }
}

impl From<bertqa::Error> for CliError {
    fn from(e: bertqa::Error) -> Self {
        Self {
            code: if e.is_user_error() { 2 } else { 1 },
            message: e.to_string(),
        }
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// Parses arguments, runs the subcommand and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ask(args) => ask::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Index(args) => index::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Train(args) => train::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
