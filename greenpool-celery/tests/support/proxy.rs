//! A TCP proxy in front of a server that a test can cut or stall.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
struct State {
    stalled: bool,
    /// Both ends of every connection made so far (for cutting).
    open: Vec<(TcpStream, TcpStream)>,
    /// Connections accepted, for the test's counts.
    accepted: u64,
    /// How many of the next connections to close at once, unforwarded.
    refuse: usize,
}

/// Forwards `127.0.0.1:<port>` to a server; [`Proxy::cut`] closes every
/// open connection, [`Proxy::stall`] stops forwarding bytes (in both
/// directions, on old and new connections) until [`Proxy::resume`].
pub struct Proxy {
    pub port: u16,
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                {
                    let mut st = s.0.lock().unwrap();
                    if st.refuse > 0 {
                        st.refuse -= 1;
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                {
                    let mut st = s.0.lock().unwrap();
                    st.accepted += 1;
                    st.open
                        .push((client.try_clone().unwrap(), server.try_clone().unwrap()));
                }
                pump(
                    Arc::clone(&s),
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                );
                pump(Arc::clone(&s), server, client);
            }
        });
        Proxy { port, shared }
    }

    /// `redis://127.0.0.1:<port>/<db>` through the proxy.
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Closes every connection open now (new ones are accepted).
    pub fn cut(&self) -> usize {
        let mut st = self.shared.0.lock().unwrap();
        let n = st.open.len();
        for (a, b) in st.open.drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        n
    }

    /// Stops forwarding: the peers see a silent, open connection.
    pub fn stall(&self) {
        self.shared.0.lock().unwrap().stalled = true;
    }

    /// Forwards again.
    pub fn resume(&self) {
        self.shared.0.lock().unwrap().stalled = false;
        self.shared.1.notify_all();
    }

    /// Closes each of the next `n` connections as soon as it is accepted.
    pub fn refuse_next(&self, n: usize) {
        self.shared.0.lock().unwrap().refuse = n;
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.0.lock().unwrap().accepted
    }
}

/// Copies `from` to `to` until either end closes, holding each chunk while
/// the proxy is stalled.
fn pump(shared: Arc<(Mutex<State>, Condvar)>, mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            {
                let (lock, cv) = &*shared;
                let mut st = lock.lock().unwrap();
                while st.stalled {
                    st = cv.wait(st).unwrap();
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
