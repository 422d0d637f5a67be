//! The canvas workload of `greenpool bench worker --canvas` (Redis): chords
//! of trivial tasks pre-enqueued as a stock Python client sends them (each
//! header part names its group, its place and the body; the chord's size
//! is set in the result backend first), drained by each worker; the run is
//! over when every body's result is stored.

use std::time::Duration;

use greenpool_celery::{Signature, TaskMessage};
use indicatif::{ProgressBar, ProgressStyle};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Map};

/// Flushes both databases and enqueues `chords` chords of `size`
/// `greenpool.add` parts whose body is `greenpool.echo`; returns the
/// bodies' task ids.
pub(crate) async fn enqueue(
    conn: &mut MultiplexedConnection,
    results: &mut MultiplexedConnection,
    chords: usize,
    size: usize,
) -> anyhow::Result<Vec<String>> {
    redis::cmd("FLUSHALL").query_async::<()>(conn).await?;
    let bar = ProgressBar::new(chords as u64).with_style(
        ProgressStyle::with_template("  enqueue {bar:40} {pos}/{len} chords")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // The bench's workers run with kombu's default key names.
    let list = greenpool_celery::RedisKeys::default().queue_key("celery", 0);
    let mut bodies = Vec::with_capacity(chords);
    for c in 0..chords {
        let group = greenpool_celery::uuid4();
        let body_id = greenpool_celery::uuid4();
        let body =
            Signature::new("greenpool.echo", Vec::new(), Map::new()).set("task_id", json!(body_id));
        redis::cmd("SET")
            .arg(format!("celery-taskset-meta-{group}.s"))
            .arg(size)
            .arg("EX")
            .arg(86_400)
            .query_async::<()>(results)
            .await?;
        let mut pipe = redis::pipe();
        for i in 0..size {
            let mut m = TaskMessage::new("greenpool.add", vec![json!(c), json!(i)], Map::new());
            m.headers.group = Some(group.clone());
            m.headers.group_index = i64::try_from(i).ok();
            m.embed.chord = Some(body.clone());
            m.properties.delivery_info.routing_key = "celery".to_owned();
            pipe.cmd("LPUSH").arg(&list).arg(m.encode()?).ignore();
        }
        pipe.query_async::<()>(conn).await?;
        bodies.push(body_id);
        bar.set_position(c as u64 + 1);
    }
    bar.finish_and_clear();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(conn)
        .await?;
    Ok(bodies)
}

/// Waits until every body in `ids` has a stored result, with a progress
/// bar; checks each ran once with its chord's results.
pub(crate) async fn wait(
    results: &mut MultiplexedConnection,
    ids: &[String],
    size: usize,
    label: &str,
) -> anyhow::Result<()> {
    let bar = ProgressBar::new(ids.len() as u64).with_style(
        ProgressStyle::with_template(&format!(
            "  {label} {{bar:40}} {{pos}}/{{len}} chords {{per_sec}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let keys: Vec<String> = ids
        .iter()
        .map(|i| format!("celery-task-meta-{i}"))
        .collect();
    loop {
        let mut done = 0;
        for chunk in keys.chunks(1000) {
            let n: usize = redis::cmd("EXISTS").arg(chunk).query_async(results).await?;
            done += n;
        }
        bar.set_position(done as u64);
        if done >= ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_and_clear();
    for chunk in keys.chunks(1000) {
        let metas: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query_async(results).await?;
        for meta in metas.into_iter().flatten() {
            let v: serde_json::Value = serde_json::from_str(&meta)?;
            let got = v["result"]["args"][0].as_array().map_or(0, Vec::len);
            anyhow::ensure!(
                v["status"] == "SUCCESS" && got == size,
                "a chord body did not get its {size} results: {meta}"
            );
        }
    }
    Ok(())
}
