use roombook_bookinglist::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init("bookinglist");
    run(Config::from_env()?, platform::shutdown::signal()).await
}
