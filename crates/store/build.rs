// `sqlx::migrate!` embeds the migrations at compile time: rebuild when one
// is added or changed, or a new migration would silently not be applied.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
