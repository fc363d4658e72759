use roombook_confirm::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init("confirm");
    run(Config::from_env()?, platform::shutdown::signal()).await
}
