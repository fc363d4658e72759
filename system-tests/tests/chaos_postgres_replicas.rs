//! Fault injection with two replicas of the orchestrator, booking and confirm, each pair sharing
//! one durable consumer and one PostgreSQL database: 300 sagas while services are SIGKILLed and restarted and nats-server
//! restarts once; every invariant must hold afterwards.

mod chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_every_service_keep_every_saga_correct_under_faults_on_postgres() {
    let mut urls = std::collections::HashMap::new();
    for service in ["booking", "confirm", "orchestrator", "bookinglist"] {
        urls.insert(
            service.to_string(),
            platform::testkit::create_postgres_database(service).await,
        );
    }
    chaos::run(chaos::Settings {
        sagas: 300,
        orchestrators: 2,
        participants: 2,
        database_url: Box::new(move |service| urls[service].clone()),
    })
    .await;
}
