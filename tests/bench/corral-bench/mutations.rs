//! The audit section's measuring client (tests/bench/audit_section.py):
//! audited mutations per second. Each is a start of a worker that is
//! already ready, which corrald audits before and after, and which changes
//! nothing, so the rate is the audit path's (and the actor's) alone.

use std::path::Path;
use std::time::{Duration, Instant};

use corral::ctl::Client;
use corral::proto::{request::Command, Start, Status};
use serde_json::{json, Value};

pub async fn run(socket: &Path, target: &str, clients: usize, length: Duration) -> Result<Value, String> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Client::connect(socket).await.map_err(|e| e.to_string())?);
    }
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in conns {
        let target = target.to_string();
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let resp = client
                    .call(Command::Start(Start { target: target.clone() }), |_| {})
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status() != Status::Ok {
                    return Err(format!("start {target} answered {}", resp.message));
                }
                done += 1;
            }
            Ok::<_, String>(done)
        });
    }
    let mut total = 0u64;
    while let Some(joined) = tasks.join_next().await {
        total += joined.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed();
    Ok(json!({ "mutations": total, "per_s": total as f64 / elapsed.as_secs_f64(), "clients": clients }))
}
