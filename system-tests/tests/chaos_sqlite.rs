//! Fault injection on the embedded default (SQLite): 300 sagas while services are SIGKILLed and
//! restarted and nats-server restarts once; every invariant must hold afterwards.

mod chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_killed_services_and_a_broker_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    chaos::run(chaos::Settings {
        sagas: 300,
        orchestrators: 1,
        participants: 1,
        database_url: Box::new(move |service| format!("sqlite://{}/{service}.db", path.display())),
    })
    .await;
}
