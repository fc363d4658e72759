use std::process::ExitCode;

use roombook_gateway::{
    cli::{self, Command},
    Config, JwtConfig,
};

#[tokio::main]
async fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("{e}\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        // No logging here: the token must be alone on stdout.
        Command::MintToken(args) => {
            match JwtConfig::from_env().and_then(|jwt| cli::mint(&jwt, &args)) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve => {
            platform::telemetry::init("gateway");
            let result = match Config::from_env() {
                Ok(config) => roombook_gateway::run(config, platform::shutdown::signal()).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "gateway failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
