use roombook_booking::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init("booking");
    run(Config::from_env()?, platform::shutdown::signal()).await
}
