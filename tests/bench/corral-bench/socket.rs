//! Clients of corrald's command socket that time requests from the write of
//! the frame to the final answer, so no client process start is counted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use corral::ctl::Client;
use corral::proto::{request::Command, response::Content, ListWorkers, Scale, Start, Status, StatusRequest, Stop};
use serde_json::{json, Value};

use crate::quantile;

#[derive(Subcommand, Clone)]
pub enum Op {
    Stop {
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long)]
        hard: bool,
    },
    Start {
        #[arg(long, default_value = "")]
        target: String,
    },
    Scale {
        #[arg(long)]
        group: String,
        #[arg(long)]
        count: u32,
    },
}

async fn connect(socket: &Path) -> Result<Client, String> {
    Client::connect(socket).await.map_err(|e| e.to_string())
}

/// One status round trip, in microseconds.
async fn status_once(client: &mut Client) -> Result<f64, String> {
    let t = Instant::now();
    let resp = client.call(Command::Status(StatusRequest {}), |_| {}).await.map_err(|e| e.to_string())?;
    if resp.status() != Status::Ok {
        return Err(format!("status answered {}", resp.message));
    }
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

fn summary(mut us: Vec<f64>, elapsed: Duration) -> Value {
    us.sort_by(f64::total_cmp);
    json!({
        "requests": us.len(),
        "per_s": us.len() as f64 / elapsed.as_secs_f64(),
        "p50_us": quantile(&us, 0.50),
        "p99_us": quantile(&us, 0.99),
        "max_us": us.last().copied().unwrap_or(f64::NAN),
    })
}

pub async fn status_load(socket: &Path, clients: usize, length: Duration) -> Result<Value, String> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(connect(socket).await?);
    }
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in conns {
        tasks.spawn(async move {
            let mut us = Vec::new();
            while Instant::now() < deadline {
                us.push(status_once(&mut client).await?);
            }
            Ok::<_, String>(us)
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.map_err(|e| e.to_string())??);
    }
    let mut out = summary(all, started.elapsed());
    out["clients"] = json!(clients);
    Ok(out)
}

pub async fn list_workers(socket: &Path, repeat: usize) -> Result<Value, String> {
    let mut client = connect(socket).await?;
    let mut ms = Vec::with_capacity(repeat);
    let mut workers = 0usize;
    for _ in 0..repeat {
        let t = Instant::now();
        let mut listed = 0usize;
        let count = |content: &Option<Content>| match content {
            Some(Content::Workers(list)) => list.workers.len(),
            _ => 0,
        };
        let resp = client
            .call(Command::ListWorkers(ListWorkers { group: String::new() }), |part| listed += count(&part.content))
            .await
            .map_err(|e| e.to_string())?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if resp.status() != Status::Ok {
            return Err(format!("ListWorkers answered {}", resp.message));
        }
        workers = listed + count(&resp.content);
    }
    Ok(json!({ "workers": workers, "ms": ms }))
}

/// Status requests back to back until `stop` is set.
async fn probe(socket: PathBuf, stop: Arc<AtomicBool>) -> Result<Vec<f64>, String> {
    let mut client = connect(&socket).await?;
    let mut us = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        us.push(status_once(&mut client).await?);
    }
    Ok(us)
}

pub async fn request(socket: &Path, op: Op, with_probe: bool, timeout: Duration) -> Result<Value, String> {
    let command = match op {
        Op::Stop { target, hard } => Command::Stop(Stop { target, hard }),
        Op::Start { target } => Command::Start(Start { target }),
        Op::Scale { group, count } => Command::Scale(Scale { group, count }),
    };
    let mut client = connect(socket).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = with_probe.then(|| tokio::spawn(probe(socket.to_path_buf(), stop.clone())));
    let t = Instant::now();
    let mut first_progress_ms = None;
    let answer = tokio::time::timeout(
        timeout,
        client.call(command, |_| {
            first_progress_ms.get_or_insert(t.elapsed().as_secs_f64() * 1000.0);
        }),
    )
    .await;
    let elapsed = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut out = match answer {
        Err(_) => json!({ "status": "TIMEOUT", "message": format!("no final answer within {timeout:?}") }),
        Ok(Err(e)) => json!({ "status": "ERROR", "message": e.to_string() }),
        Ok(Ok(resp)) => {
            let (total, succeeded) = match &resp.content {
                Some(Content::Outcome(o)) => (o.total, o.succeeded),
                _ => (0, 0),
            };
            json!({
                "status": corral::ctl::status_name(resp.status),
                "message": resp.message,
                "total": total,
                "succeeded": succeeded,
            })
        }
    };
    out["ms"] = json!(elapsed.as_secs_f64() * 1000.0);
    out["first_progress_ms"] = json!(first_progress_ms);
    if let Some(prober) = prober {
        let mut us = prober.await.map_err(|e| e.to_string())??;
        us.sort_by(f64::total_cmp);
        out["probe"] = json!({
            "requests": us.len(),
            "p99_us": quantile(&us, 0.99),
            "max_us": us.last().copied().unwrap_or(f64::NAN),
        });
    }
    Ok(out)
}
