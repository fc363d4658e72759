// `sqlx::migrate!` embeds the migration folders when the crate compiles and cannot ask the
// compiler to watch them: rebuild whenever a migration is added or changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
