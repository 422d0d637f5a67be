//! `greenpool worker`, `call` and `inspect` over TLS (`rediss://` with
//! Celery's `ssl_*` query keys) and as a Redis ACL user, each against a
//! redis-server the test starts: the certificates are made by the
//! `openssl` command in a temporary directory. With `GREENPOOL_PYTHON`
//! set, the stock Celery client sends a task over the same TLS URL.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::process::Proc;
use support::RedisServer;

/// The extensions of the test CA and of the server's certificate.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = greenpool test
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
";

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "greenpool-{tag}-{}-{}",
            std::process::id(),
            support::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the openssl command is there; a loud skip (or a failure with
/// GREENPOOL_REQUIRE_REDIS=1) when not.
fn have_openssl() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !support::required(),
            "GREENPOOL_REQUIRE_REDIS=1 but no openssl command"
        );
        eprintln!("\n*** SKIPPED: no openssl command to make test certificates ***\n");
    }
    ok
}

/// A key and certificate in `dir` signed by the CA `ca.pem`:
/// `<name>.key`, `<name>.pem`, for subject `subj`, with the extensions
/// of section `ext` of `openssl.cnf`.
fn sign(dir: &Path, name: &str, subj: &str, ext: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-config",
            "openssl.cnf",
            "-subj",
            subj,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            ext,
        ],
    );
}

/// A CA (`<name>.pem`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca_ext",
            "-subj",
            &format!("/CN=greenpool test {name}"),
        ],
    );
    dir.join(pem)
}

/// A CA, a certificate for 127.0.0.1 it signed, and a second CA that
/// signed nothing here.
struct Certs {
    dir: Dir,
    ca: PathBuf,
    other_ca: PathBuf,
}

impl Certs {
    fn make() -> Certs {
        let dir = Dir::new("tls");
        std::fs::write(dir.path("openssl.cnf"), OPENSSL_CNF).unwrap();
        let ca = make_ca(&dir.0, "ca");
        let other_ca = make_ca(&dir.0, "other");
        sign(&dir.0, "server", "/CN=127.0.0.1", "server_ext");
        Certs { dir, ca, other_ca }
    }

    /// A client certificate the CA signed: `client.pem`, `client.key`.
    fn client(&self) -> (PathBuf, PathBuf) {
        sign(&self.dir.0, "client", "/CN=greenpool client", "client_ext");
        (self.dir.path("client.pem"), self.dir.path("client.key"))
    }
}

/// A redis-server that speaks TLS only, on `port`; `auth_clients`: its
/// `tls-auth-clients` (whether a client needs a certificate).
fn tls_server(certs: &Certs, port: u16, auth_clients: &str) -> Option<RedisServer> {
    let p = |n: &str| certs.dir.path(n).to_string_lossy().into_owned();
    RedisServer::start_with(&[
        "--appendonly",
        "no",
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &p("server.pem"),
        "--tls-key-file",
        &p("server.key"),
        "--tls-ca-cert-file",
        &p("ca.pem"),
        "--tls-auth-clients",
        auth_clients,
    ])
}

fn greenpool(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `greenpool worker` on `url` (broker and result backend), once ready.
fn worker(url: &str, node: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.args(["worker", "--broker", url, "--result-backend", url])
        .args(["-n", node, "-c", "4", "--loglevel", "info"])
        .env_remove("RUST_LOG");
    let w = Proc::spawn("worker", cmd);
    w.wait_for(" ready.");
    w
}

/// `greenpool call greenpool.add [x, y] --wait` on `url`; its result.
fn add(url: &str, x: i64, y: i64) -> String {
    let args = format!("[{x}, {y}]");
    let (ok, out, err) = greenpool(&[
        "call",
        "greenpool.add",
        &args,
        "--broker",
        url,
        "--result-backend",
        url,
        "--wait",
    ]);
    assert!(ok, "greenpool call on {url} failed:\n{out}\n{err}");
    out.lines().last().unwrap_or_default().trim().to_owned()
}

/// `greenpool inspect ping` on `url` reaches `node`.
fn assert_pings(url: &str, node: &str) {
    let (ok, out, err) = greenpool(&["inspect", "ping", "--broker", url, "-d", node, "-t", "5"]);
    assert!(ok && out.contains(&format!("{node}: OK")), "{out}\n{err}");
}

/// `greenpool call` on `url` fails; its stderr.
fn call_fails(url: &str) -> String {
    let (ok, out, err) = greenpool(&[
        "call",
        "greenpool.add",
        "[1, 1]",
        "--broker",
        url,
        "--wait",
        "--timeout",
        "30",
    ]);
    assert!(!ok, "greenpool call on {url} should fail:\n{out}");
    eprintln!("[call] {}", err.trim_end());
    err
}

/// The Python with Celery, only when GREENPOOL_PYTHON names it.
fn python() -> Option<PathBuf> {
    if std::env::var_os("GREENPOOL_PYTHON").is_none() {
        eprintln!("\n*** SKIPPED the Python client part: set GREENPOOL_PYTHON ***\n");
        return None;
    }
    support::python()
}

const PY_ADD: &str = "\
import sys
from celery import Celery
url = sys.argv[1]
app = Celery('tls', broker=url, backend=url)
r = app.send_task('greenpool.add', args=[40, 2])
print(r.get(timeout=60))
";

#[test]
fn worker_call_inspect_and_python_over_tls() {
    if !have_openssl() {
        return;
    }
    let certs = Certs::make();
    let port = support::free_port();
    let Some(_server) = tls_server(&certs, port, "no") else {
        return;
    };
    let ca = certs.ca.display().to_string();
    let url = format!("rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}");
    let w = worker(&url, "tls@test");
    assert_eq!(add(&url, 2, 3), "5");
    assert_pings(&url, "tls@test");

    // Python's spelling of the same, and no check at all.
    let upper = url.replace("=required", "=CERT_REQUIRED");
    assert_eq!(add(&upper, 4, 5), "9");
    let insecure = format!("rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none");
    assert_eq!(add(&insecure, 6, 7), "13");

    // A CA that did not sign the server's certificate.
    let other = certs.other_ca.display().to_string();
    let wrong = format!("rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={other}");
    let err = call_fails(&wrong);
    assert!(
        err.contains("certificate") && err.contains("ssl_ca_certs"),
        "{err}"
    );
    // The system's roots do not know the test CA either.
    let err = call_fails(&format!("rediss://127.0.0.1:{port}/0"));
    assert!(err.contains("certificate"), "{err}");
    // Options that cannot be used.
    let missing = certs.dir.path("missing.pem").display().to_string();
    let err = call_fails(&format!(
        "rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={missing}"
    ));
    assert!(
        err.contains("ssl_ca_certs") && err.contains("cannot read"),
        "{err}"
    );
    let err = call_fails(&format!("rediss://127.0.0.1:{port}/0?ssl_verify=yes"));
    assert!(err.contains("ssl_verify"), "{err}");

    if let Some(python) = python() {
        let mut cmd = Command::new(python);
        cmd.args(["-c", PY_ADD, &url]);
        let out = support::process::stdout_of(cmd, "the Celery client over TLS");
        assert_eq!(out.trim(), "42", "{out}");
    }
    w.stop();
}

/// A server that asks for client certificates: `ssl_certfile` and
/// `ssl_keyfile`, or one file holding both.
#[test]
fn client_certificates_for_a_server_that_asks_for_them() {
    if !have_openssl() {
        return;
    }
    let certs = Certs::make();
    let (cert, key) = certs.client();
    let port = support::free_port();
    let Some(_server) = tls_server(&certs, port, "yes") else {
        return;
    };
    let base = format!(
        "rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={}",
        certs.ca.display()
    );
    let url = format!(
        "{base}&ssl_certfile={}&ssl_keyfile={}",
        cert.display(),
        key.display()
    );
    let w = worker(&url, "mtls@test");
    assert_eq!(add(&url, 1, 2), "3");
    let both = certs.dir.path("both.pem");
    let mut pem = std::fs::read(&cert).unwrap();
    pem.extend(std::fs::read(&key).unwrap());
    std::fs::write(&both, pem).unwrap();
    assert_eq!(
        add(&format!("{base}&ssl_certfile={}", both.display()), 3, 4),
        "7"
    );
    w.stop();
}

#[test]
fn worker_call_and_inspect_as_an_acl_user() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut conn = server.conn(0);
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "alice", "on", ">s3cret", "~*", "&*", "+@all"][..])
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "off"][..])
        .query(&mut conn)
        .unwrap();
    let port = server.port;
    let url = format!("redis://alice:s3cret@127.0.0.1:{port}/0");
    let w = worker(&url, "acl@test");
    assert_eq!(add(&url, 20, 22), "42");
    assert_pings(&url, "acl@test");

    for bad in [
        format!("redis://alice:n0tit@127.0.0.1:{port}/0"),
        format!("redis://mallory:s3cret@127.0.0.1:{port}/0"),
    ] {
        let err = call_fails(&bad);
        assert!(
            err.contains("password") && err.contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(!err.contains("s3cret") && !err.contains("n0tit"), "{err}");
    }
    // The worker stops at start with the same reason.
    let (ok, out, err) = greenpool(&[
        "worker",
        "--broker",
        &format!("redis://alice:n0tit@127.0.0.1:{port}/0"),
        "-n",
        "nope@test",
    ]);
    assert!(!ok, "{out}");
    assert!(err.contains("password") && !err.contains("n0tit"), "{err}");
    // Without a user the default user is off: the server says so.
    let err = call_fails(&format!("redis://127.0.0.1:{port}/0"));
    assert!(err.contains("NOAUTH") && err.contains("password"), "{err}");
    assert_eq!(w.lines_with("s3cret"), 0, "the worker logged the password");
    assert!(
        w.lines_with("alice:***@") > 0,
        "the worker names its broker"
    );
    w.stop();
}
