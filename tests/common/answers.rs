//! A request's answers read off a client's connection, each within the
//! test's patience.

use corral::ctl::Client;
use corral::proto::{self, Status};

use super::PATIENCE;

/// The next answer on `client`.
pub async fn next_answer(client: &mut Client) -> proto::Response {
    tokio::time::timeout(PATIENCE, client.recv())
        .await
        .expect("an answer in time")
        .expect("receive")
        .expect("the connection stays open")
}

/// Reads the PROCESSING answers to request `id` until `workers` of them
/// say a worker acknowledged it.
pub async fn acknowledged(client: &mut Client, id: u64, workers: usize) {
    let mut acks = 0;
    while acks < workers {
        let r = next_answer(client).await;
        assert_eq!((r.id, r.status()), (id, Status::Processing), "{r:?}");
        if r.message.ends_with("acknowledged") {
            acks += 1;
        }
    }
}

/// Reads answers until the final one, and returns it.
pub async fn final_answer(client: &mut Client) -> proto::Response {
    loop {
        let r = next_answer(client).await;
        if r.status() != Status::Processing {
            return r;
        }
    }
}
