//! `portcullis`: the gateway (`serve`), its offline tools (`config check`, `migrate`) and the
//! admin CLI, which is a plain client of the admin API.

mod admin_cli;
mod log_writer;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of the system allocator: a request allocates and frees many small buffers
/// across threads, which glibc's malloc serves at several times the cost (it showed as ~10 % of
/// the gateway's CPU under load; see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about = "Secure access gateway for small language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: GlobalArgs,
}

/// Options every subcommand accepts, before or after its name.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Admin API base URL for CLI commands.
    #[arg(long, global = true, env = "PORTCULLIS_ADMIN_URL", default_value = "http://127.0.0.1:8081")]
    pub admin_url: String,
    /// Print JSON instead of human tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PORTCULLIS_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: the proxy and admin listeners.
    Serve(serve::ServeArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Apply pending store migrations and exit.
    Migrate {
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Manage API keys.
    #[command(subcommand)]
    Keys(admin_cli::keys::KeysCommand),
    /// Manage teams.
    #[command(subcommand)]
    Teams(admin_cli::teams::TeamsCommand),
    /// Manage admin tokens.
    #[command(subcommand)]
    Tokens(admin_cli::tokens::TokensCommand),
    /// Report usage: requests, tokens and cost per day, hour, model, key or team.
    Usage(admin_cli::usage::UsageArgs),
    /// Read the audit log: query, tail, export, and verify its hash chains.
    #[command(subcommand)]
    Audit(admin_cli::audit::AuditCommand),
    /// Explain a credential: the principal an API key or token becomes, or why it is refused.
    #[command(subcommand)]
    Auth(admin_cli::auth::AuthCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file without serving; errors name the field path.
    Check {
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Ask the running gateway (admin API) when its configuration was loaded, how the last
    /// reload went, and which changed settings wait for a restart.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&anyhow::Error::new(error).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args, &cli.global).await,
            Command::Config(ConfigCommand::Check { config }) => serve::check_config(&config, &cli.global),
            Command::Config(ConfigCommand::Status) => admin_cli::config::status(&cli.global).await,
            Command::Migrate { config } => serve::migrate(&config, &cli.global).await,
            Command::Keys(command) => admin_cli::keys::run(command, &cli.global).await,
            Command::Teams(command) => admin_cli::teams::run(command, &cli.global).await,
            Command::Tokens(command) => admin_cli::tokens::run(command, &cli.global).await,
            Command::Usage(args) => admin_cli::usage::run(args, &cli.global).await,
            Command::Audit(command) => admin_cli::audit::run(command, &cli.global).await,
            Command::Auth(command) => admin_cli::auth::run(command, &cli.global).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// The error and its causes, each once (see [`portcullis_types::chain`]).
#[allow(clippy::print_stderr, reason = "the last word of a failed command goes to the terminal")]
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", portcullis_types::chain(error.as_ref()));
    ExitCode::FAILURE
}
