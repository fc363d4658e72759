use roombook_orchestrator::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init("orchestrator");
    run(Config::from_env()?, platform::shutdown::signal()).await
}
