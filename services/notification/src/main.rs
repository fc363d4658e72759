use roombook_notification::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init("notification");
    run(Config::from_env()?, platform::shutdown::signal()).await
}
