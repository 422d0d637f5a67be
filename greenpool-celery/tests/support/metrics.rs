//! Reading a worker's `/metrics` endpoint with a plain `TcpStream`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The samples of a scrape: `name{labels}` → value, `greenpool_` lines.
pub type Samples = BTreeMap<String, String>;

/// GET /metrics on loopback `port`; checks the status and content type.
pub fn scrape(port: u16) -> Samples {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    // Header names are case-insensitive (hyper writes them lower-case).
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.lines()
        .filter(|l| l.starts_with("greenpool_"))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Scrapes until `want` holds (a worker updates its counters just after
/// it stores a result, so a client that saw the result may scrape a
/// moment early); fails with the last samples after a deadline.
pub fn scrape_until(port: u16, what: &str, want: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = scrape(port);
        if want(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: {m:#?}");
        // Polling another process's state: there is no event to wait on.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `key`, or `<absent>`.
pub fn get<'a>(m: &'a Samples, key: &str) -> &'a str {
    m.get(key).map_or("<absent>", String::as_str)
}

/// The task counters (`greenpool_tasks_…`) only.
pub fn task_counts(m: &Samples) -> Samples {
    m.iter()
        .filter(|(k, _)| k.starts_with("greenpool_tasks_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Expected task counters from `(counter, task, value)` triples.
pub fn expected_counts(rows: &[(&str, &str, &str)]) -> Samples {
    rows.iter()
        .map(|(c, t, n)| {
            (
                format!("greenpool_tasks_{c}_total{{task=\"{t}\"}}"),
                (*n).to_owned(),
            )
        })
        .collect()
}
