//! `zbctl update` end to end against a real HTTPS server on loopback: a small HTTP/1.1 server
//! (rustls, a self-signed rcgen certificate) started by each test, with Range support and the
//! failures a device meets in the field (cut bodies, tampered bytes, 404, stalls, redirect
//! loops, a wrong content type, a certificate for another host). The disk image is checked
//! afterwards: slot B's root against the image, the state, slot A byte for byte.
// Helpers outside `#[test]` fns unwrap too (clippy.toml only covers the test fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    ROOT_A, ROOT_B, assert_active_untouched, cmdline_file, compare_root_with_image,
    convert_small_image, create_small_disk, mtype, noise, ok, s, slot_state, status, tar, zbctl,
    zbctl_env,
};
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use recovery_proto::image::{Image, RegionKind, Role, SliceSource};

// ---------------------------------------------------------------------------------------------
// The loopback server.

/// What the server does for a path.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// 206 for a range, 200 without one.
    Normal,
    /// The first response whose range covers this byte offset stops there (connection closed).
    CutOnce(u64),
    /// Every response whose range covers this byte offset stops there.
    CutAlways(u64),
    /// 404.
    NotFound,
    /// Reads the request and never answers.
    Stall,
    /// 302 to another path.
    Redirect(&'static str),
    /// Serves the bytes as `text/html`.
    WrongType,
    /// Cut once at the first offset; from then on the file has changed on the server: the
    /// byte at the second offset differs and the ETag is another.
    CutThenChange(u64, u64),
    /// Cut once at this offset; from then on the answers carry no ETag (same bytes).
    CutThenNoEtag(u64),
    /// From this offset on, one byte every 100 ms (for at most 30 s, then the connection
    /// closes).
    Drip(u64),
    /// Sends up to this offset, then nothing for a minute.
    StallAt(u64),
    /// Sends up to this offset, then waits until [`Server::release`] is set.
    PauseAt(u64),
    /// Takes `POST` bodies (update reports): kept in [`Server::posts`], answered 204.
    Collect,
}

struct Route {
    bytes: Vec<u8>,
    behaviour: Behaviour,
    cut_done: AtomicBool,
}

/// Set by a test to let a [`Behaviour::PauseAt`] response go on.
static RELEASE: AtomicBool = AtomicBool::new(false);
/// Set by the server when a [`Behaviour::PauseAt`] response has reached its offset.
static PAUSED: AtomicBool = AtomicBool::new(false);

struct Server {
    port: u16,
    /// `path range` of every request.
    log: Arc<Mutex<Vec<String>>>,
    /// Body bytes sent.
    sent: Arc<AtomicU64>,
    /// The certificate's PEM (the test's `ca_cert=`).
    ca: Option<String>,
    /// `POST` bodies taken by a [`Behaviour::Collect`] route, in arrival order.
    posts: Arc<Mutex<Vec<Vec<u8>>>>,
    /// TCP connections accepted.
    connections: Arc<AtomicU64>,
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

impl Server {
    /// Starts a server: `tls` is the host name its certificate is for (None: plain HTTP).
    fn start(routes: Vec<(&str, Vec<u8>, Behaviour)>, tls: Option<&str>) -> Server {
        Self::start_on(0, routes, tls)
    }

    /// [`Server::start`] on `port` (0: any free one).
    fn start_on(port: u16, routes: Vec<(&str, Vec<u8>, Behaviour)>, tls: Option<&str>) -> Server {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<HashMap<String, Route>> = Arc::new(
            routes
                .into_iter()
                .map(|(path, bytes, behaviour)| {
                    (
                        path.to_string(),
                        Route {
                            bytes,
                            behaviour,
                            cut_done: AtomicBool::new(false),
                        },
                    )
                })
                .collect(),
        );
        let (config, ca) = match tls {
            Some(host) => {
                let certified = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
                let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
                    certified.signing_key.serialize_der().into(),
                );
                let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![certified.cert.der().clone()], key)
                .unwrap();
                (Some(Arc::new(config)), Some(certified.cert.pem()))
            }
            None => (None, None),
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let (thread_log, thread_sent, thread_posts, thread_connections) = (
            log.clone(),
            sent.clone(),
            posts.clone(),
            connections.clone(),
        );
        std::thread::spawn(move || {
            for connection in listener.incoming() {
                let Ok(tcp) = connection else { continue };
                thread_connections.fetch_add(1, Ordering::SeqCst);
                let (routes, log, sent, posts, config) = (
                    routes.clone(),
                    thread_log.clone(),
                    thread_sent.clone(),
                    thread_posts.clone(),
                    config.clone(),
                );
                std::thread::spawn(move || {
                    let stream: Box<dyn Stream> = match config {
                        Some(config) => Box::new(rustls::StreamOwned::new(
                            rustls::ServerConnection::new(config).unwrap(),
                            tcp,
                        )),
                        None => Box::new(tcp),
                    };
                    let _ = serve(stream, &routes, &log, &sent, &posts);
                });
            }
        });
        Server {
            port,
            log,
            sent,
            ca,
            posts,
            connections,
        }
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://localhost:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// One connection: requests until the client closes it (or a behaviour does).
#[allow(clippy::too_many_lines)] // one request's handling, top to bottom
fn serve(
    stream: Box<dyn Stream>,
    routes: &HashMap<String, Route>,
    log: &Mutex<Vec<String>>,
    sent: &AtomicU64,
    posts: &Mutex<Vec<Vec<u8>>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let post = line.starts_with("POST ");
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut range = None;
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("range") {
                    range = Some(value.trim().to_string());
                } else if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; length];
        if post {
            reader.read_exact(&mut body)?;
        }
        log.lock()
            .unwrap()
            .push(format!("{path} {}", range.as_deref().unwrap_or("-")));
        let out = reader.get_mut();
        let Some(route) = routes.get(&path) else {
            write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            out.flush()?;
            continue;
        };
        let kind = match route.behaviour {
            Behaviour::Collect => {
                posts.lock().unwrap().push(body);
                write!(out, "HTTP/1.1 204 No Content\r\n\r\n")?;
                out.flush()?;
                continue;
            }
            Behaviour::NotFound => {
                let body = b"<html>no such file</html>";
                write!(
                    out,
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )?;
                out.write_all(body)?;
                out.flush()?;
                continue;
            }
            Behaviour::Stall => {
                std::thread::sleep(Duration::from_mins(1));
                return Ok(());
            }
            Behaviour::Redirect(to) => {
                write!(
                    out,
                    "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
                )?;
                out.flush()?;
                continue;
            }
            Behaviour::WrongType => "text/html; charset=utf-8",
            _ if path.ends_with("latest") => "text/plain",
            _ => "application/octet-stream",
        };
        let cut_done = route.cut_done.load(Ordering::SeqCst);
        let etag = match route.behaviour {
            Behaviour::CutThenChange(..) if cut_done => "ETag: \"zi-2\"\r\n",
            Behaviour::CutThenNoEtag(_) if cut_done => "",
            _ => "ETag: \"zi-1\"\r\n",
        };
        let changed;
        let bytes = match route.behaviour {
            Behaviour::CutThenChange(_, flip) if cut_done => {
                let mut copy = route.bytes.clone();
                copy[usize::try_from(flip).unwrap()] ^= 0x40;
                changed = copy;
                &changed
            }
            _ => &route.bytes,
        };
        let total = bytes.len() as u64;
        // RFC 9110 §14.1.2: `bytes=first-[last]`, last clamped to the end.
        let (first, last) = if let Some(spec) =
            range.as_deref().and_then(|r| r.strip_prefix("bytes="))
        {
            {
                let (a, b) = spec.split_once('-').unwrap();
                let a: u64 = a.parse().unwrap();
                let b = if b.is_empty() {
                    total.saturating_sub(1)
                } else {
                    b.parse::<u64>().unwrap().min(total.saturating_sub(1))
                };
                if a >= total {
                    write!(
                        out,
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\n\
                         Content-Length: 0\r\n\r\n"
                    )?;
                    out.flush()?;
                    continue;
                }
                write!(
                    out,
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{total}\r\n"
                )?;
                (a, b)
            }
        } else {
            write!(out, "HTTP/1.1 200 OK\r\n")?;
            (0, total.saturating_sub(1))
        };
        write!(
            out,
            "Content-Type: {kind}\r\n{etag}Accept-Ranges: bytes\r\n\
             Content-Length: {}\r\n\r\n",
            last + 1 - first
        )?;
        let mut end = last + 1;
        let mut slow = None;
        match route.behaviour {
            Behaviour::CutOnce(at)
            | Behaviour::CutThenChange(at, _)
            | Behaviour::CutThenNoEtag(at)
                if (first..end).contains(&at) && !route.cut_done.swap(true, Ordering::SeqCst) =>
            {
                end = at;
            }
            Behaviour::CutAlways(at) if (first..end).contains(&at) => end = at,
            Behaviour::Drip(at) | Behaviour::StallAt(at) | Behaviour::PauseAt(at)
                if (first..end).contains(&at) =>
            {
                slow = Some((route.behaviour, end));
                end = at;
            }
            _ => {}
        }
        let body = &bytes[usize::try_from(first).unwrap()..usize::try_from(end).unwrap()];
        for piece in body.chunks(64 << 10) {
            out.write_all(piece)?;
            sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
        out.flush()?;
        if let Some((behaviour, rest_end)) = slow {
            match behaviour {
                Behaviour::Drip(_) => {
                    let started = Instant::now();
                    for byte in &bytes[usize::try_from(end).unwrap()..] {
                        if started.elapsed() > Duration::from_secs(30) {
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        out.write_all(std::slice::from_ref(byte))?;
                        out.flush()?;
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Behaviour::StallAt(_) => {
                    std::thread::sleep(Duration::from_mins(1));
                    return Ok(());
                }
                _ => {
                    PAUSED.store(true, Ordering::SeqCst);
                    let started = Instant::now();
                    while !RELEASE.load(Ordering::SeqCst) {
                        if started.elapsed() > Duration::from_mins(1) {
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let rest =
                        &bytes[usize::try_from(end).unwrap()..usize::try_from(rest_end).unwrap()];
                    out.write_all(rest)?;
                    out.flush()?;
                    sent.fetch_add(rest.len() as u64, Ordering::SeqCst);
                    end = rest_end;
                }
            }
        }
        if end != last + 1 {
            // Cut: the connection goes away without the rest (and without TLS close_notify).
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Disks and images.

/// A disk with slot A at version 3; images of version 5 (`os.zi`), 3 (`same.zi`) and a
/// version 5 whose root (48 MiB) does not fit the disk's 32 MiB root partitions (`big.zi`).
struct Fixture {
    dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::write(p.join("zboot.img"), noise(70_000, 1)).unwrap();
        fs::write(p.join("kernel"), noise(300_001, 2)).unwrap();
        create_small_disk(
            &p.join("disk.img"),
            &p.join("zboot.img"),
            &p.join("kernel"),
            &[],
        );
        let boot = p.join("boot");
        fs::create_dir_all(boot.join("A")).unwrap();
        fs::write(boot.join("config.txt"), "arm_64bit=1\nkernel=zboot.img\n").unwrap();
        fs::write(boot.join("zboot.img"), noise(70_000, 1)).unwrap();
        fs::write(boot.join("A/kernel.img"), noise(200_000, 9)).unwrap();
        fs::write(boot.join("A/cmdline.txt"), "console=ttyAMA0 rootwait\n").unwrap();
        let root = p.join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), "new\n").unwrap();
        // Incompressible (xorshift), so the image is about 6 MiB on the wire.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let random: Vec<u8> = (0..6 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(root.join("etc/blob"), random).unwrap();
        tar(&boot, &p.join("boot.tar"));
        tar(&root, &p.join("root.tar"));
        for (name, version, root_mib) in [
            ("v7.zi", "7", "24"),
            ("os.zi", "5", "24"),
            ("same.zi", "3", "24"),
            ("big.zi", "5", "48"),
        ] {
            convert_small_image(p, name, version, root_mib);
        }
        ok(&["key", "generate", "-o", s(&p.join("release"))]);
        fs::copy(p.join("os.zi"), p.join("signed.zi")).unwrap();
        ok(&[
            "image",
            "sign",
            s(&p.join("signed.zi")),
            "--key",
            s(&p.join("release.key")),
        ]);
        // Signed, but by a key the disks do not trust.
        ok(&["key", "generate", "-o", s(&p.join("other"))]);
        fs::copy(p.join("os.zi"), p.join("other.zi")).unwrap();
        ok(&[
            "image",
            "sign",
            s(&p.join("other.zi")),
            "--key",
            s(&p.join("other.key")),
        ]);
        Fixture { dir }
    })
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bytes(&self, name: &str) -> Vec<u8> {
        fs::read(self.path(name)).unwrap()
    }

    /// A private copy of the disk whose zbmanifest.txt is `manifest`.
    fn disk(&self, manifest: &str) -> Disk {
        self.disk_in(|_| manifest.to_string())
    }

    /// A private copy of the disk whose zbmanifest.txt `manifest` makes, given the disk's
    /// directory.
    fn disk_in(&self, manifest: impl FnOnce(&Path) -> String) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        fs::copy(self.path("disk.img"), &path).unwrap();
        set_manifest(&path, &manifest(dir.path()));
        let before = fs::read(&path).unwrap();
        Disk { dir, path, before }
    }
}

/// Replaces zbmanifest.txt on the disk's boot partition.
fn set_manifest(disk: &Path, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zbmanifest.txt");
    fs::write(&file, text).unwrap();
    let out = Command::new("mcopy")
        .args([
            "-o",
            "-i",
            &format!("{}@@1M", s(disk)),
            s(&file),
            "::zbmanifest.txt",
        ])
        .output()
        .expect("mcopy (run scripts/setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Disk {
    dir: tempfile::TempDir,
    path: PathBuf,
    /// The bytes after the manifest was written.
    before: Vec<u8>,
}

impl Disk {
    /// `zbctl --image <disk> update <args>` with a private lock file.
    fn update(&self, args: &[&str]) -> Output {
        let lock = self.dir.path().join("update.lock");
        let mut all = vec!["--image", s(&self.path), "update"];
        all.extend_from_slice(&args[..1]);
        all.extend_from_slice(&["--lock", s(&lock)]);
        all.extend_from_slice(&args[1..]);
        zbctl(&all)
    }

    /// `zbctl --device <disk> update <args>` (the running system's view: the kernel command
    /// line, here `cmdline`, says which slot is running) with a private lock file.
    fn update_device(&self, args: &[&str], cmdline: &str) -> Output {
        let lock = self.dir.path().join("update.lock");
        let cmdline = cmdline_file(self.dir.path(), cmdline);
        let mut all = vec!["--device", s(&self.path), "update"];
        all.extend_from_slice(&args[..1]);
        all.extend_from_slice(&["--lock", s(&lock)]);
        all.extend_from_slice(&args[1..]);
        zbctl_env(&all, &[("ZBCTL_PROC_CMDLINE", cmdline.as_os_str())])
    }

    fn unchanged(&self) -> bool {
        fs::read(&self.path).unwrap() == self.before
    }

    fn status(&self) -> serde_json::Value {
        status(&self.path)
    }

    fn slot_state(&self, slot: &str) -> String {
        slot_state(&self.status(), slot)
    }

    /// Slot A (root, files), the MBR and everything after root B are
    /// byte-identical, and A is still ACTIVE and good.
    fn assert_active_untouched(&self) {
        assert_active_untouched(&self.before, &self.path);
        assert_eq!(self.status()["active"], "A");
        assert_eq!(self.slot_state("A"), "good");
    }

    /// The image's root regions (data and fill) are in root B, byte for byte.
    fn assert_root_b_is(&self, image_bytes: &[u8]) {
        let compared =
            compare_root_with_image(&fs::read(&self.path).unwrap(), ROOT_B.start, image_bytes);
        assert!(compared > 6 << 20, "{compared}");
    }
}

fn https_manifest(url: &str, ca: &Path) -> String {
    format!(
        "update_endpoint={url}\nendpoint_type=HTTPS\nca_cert={}\n",
        s(ca)
    )
}

/// Asserts the exit code and that stdout+stderr hold every needle; returns them.
fn expect(out: &Output, code: i32, needles: &[&str]) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- exit {:?}:\n{text}", out.status.code());
    assert_eq!(out.status.code(), Some(code), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "missing {needle:?} in: {text}");
    }
    text
}

/// A disk whose manifest points at `path` on `server` (trusting its certificate).
fn disk_for(server: &Server, path: &str) -> Disk {
    https_disk(&server.url(path), server.ca.as_ref().unwrap())
}

fn https_disk(url: &str, ca_pem: &str) -> Disk {
    fixture().disk_in(|dir| {
        let ca = dir.join("ca.pem");
        fs::write(&ca, ca_pem).unwrap();
        https_manifest(url, &ca)
    })
}

/// Payload offset of a byte inside a data region of the image's root partition, about
/// `fraction` of the way through the root's data.
fn root_payload_offset(image_bytes: &[u8], fraction: f64) -> u64 {
    let mut manifest = vec![0u8; 1 << 20];
    let image = Image::open(&mut SliceSource(image_bytes), &mut manifest, None).unwrap();
    let (root, _) = image.partition_with_role(Role::RootA).unwrap();
    let data: Vec<_> = image
        .regions()
        .filter(|r| u32::from(r.partition) == root && r.kind == RegionKind::Data)
        .collect();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let pick = data[((data.len() - 1) as f64 * fraction) as usize];
    image.header().payload_offset() + pick.payload_offset + u64::from(pick.stored_size / 2)
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn newer_image_installs_into_backup_as_a_trial_and_reboots() {
    let f = fixture();
    let server = Server::start(
        vec![
            ("/os.zi", f.bytes("os.zi"), Behaviour::Normal),
            ("/v7.zi", f.bytes("v7.zi"), Behaviour::Normal),
        ],
        Some("localhost"),
    );
    let disk = disk_for(&server, "/os.zi");
    expect(
        &disk.update(&["check"]),
        0,
        &["update available", "version 5", "slot B"],
    );
    assert!(disk.unchanged(), "check wrote to the disk");
    // check reads the header, trailer and manifest only: a few hundred bytes to a few KiB.
    let check_bytes = server.sent.load(Ordering::SeqCst);
    assert!(
        check_bytes < 64 << 10,
        "check downloaded {check_bytes} bytes"
    );
    assert!(
        server.requests().iter().all(|r| r.contains("bytes=")),
        "{:?}",
        server.requests()
    );
    let marker = disk.dir.path().join("rebooted");
    let reboot = format!("touch {}", s(&marker));
    let out = disk.update(&["apply", "--reboot", "--reboot-command", &reboot]);
    expect(
        &out,
        0,
        &[
            "installed os version 5",
            "into slot B as a trial",
            "rebooting",
        ],
    );
    assert!(marker.exists(), "the reboot command did not run");
    let json = disk.status();
    assert_eq!(json["active"], "B");
    assert_eq!(json["backup"], "A");
    assert_eq!(disk.slot_state("B"), "trial");
    disk.assert_root_b_is(&f.bytes("os.zi"));
    let after = fs::read(&disk.path).unwrap();
    assert!(disk.before[ROOT_A] == after[ROOT_A], "root A changed");
    assert_eq!(
        mtype(&disk.path, "B/kernel.img"),
        fs::read(f.path("boot/A/kernel.img")).unwrap()
    );
    // The image was read once (no full second pass over the network).
    let total = server.sent.load(Ordering::SeqCst) - check_bytes;
    let size = f.bytes("os.zi").len() as u64;
    assert!(
        total <= size + (64 << 10),
        "apply downloaded {total} of {size} bytes"
    );
    // Installed now: the same image is not newer than ACTIVE (B, version 5).
    expect(&disk.update(&["check"]), 6, &["up to date", "slot B"]);
    // Version 7 waits until B (a trial) is confirmed: A is the fallback until then.
    let ca = disk.dir.path().join("ca.pem");
    fs::write(&ca, server.ca.as_ref().unwrap()).unwrap();
    set_manifest(&disk.path, &https_manifest(&server.url("/v7.zi"), &ca));
    let before = fs::read(&disk.path).unwrap();
    expect(
        &disk.update(&["apply"]),
        9,
        &["not yet confirmed", "version 7 waits"],
    );
    assert!(
        fs::read(&disk.path).unwrap() == before,
        "the disk was written"
    );
    // (Confirming B needs a boot recorded by the loader: the decision's unit test covers
    // what follows, version 7 going into slot A.)
}

#[test]
fn same_or_older_version_is_skipped() {
    let f = fixture();
    let server = Server::start(
        vec![
            ("/same.zi", f.bytes("same.zi"), Behaviour::Normal),
            ("/os.zi", f.bytes("os.zi"), Behaviour::Normal),
        ],
        Some("localhost"),
    );
    let disk = disk_for(&server, "/same.zi");
    expect(&disk.update(&["check"]), 6, &["up to date", "version 3"]);
    expect(&disk.update(&["apply"]), 6, &["up to date"]);
    assert!(disk.unchanged(), "the disk was written");
    // Anti-rollback: version 5 is below a minimum of 6.
    let disk = disk_for(&server, "/os.zi");
    ok(&[
        "--image",
        s(&disk.path),
        "init-state",
        "--force",
        "--min-version",
        "6",
    ]);
    let before = fs::read(&disk.path).unwrap();
    expect(&disk.update(&["apply"]), 6, &["anti-rollback minimum 6"]);
    assert!(
        fs::read(&disk.path).unwrap() == before,
        "the disk was written"
    );
}

#[test]
fn download_cut_mid_way_resumes_with_a_range_request() {
    let f = fixture();
    let image = f.bytes("os.zi");
    let cut = root_payload_offset(&image, 0.5);
    let server = Server::start(
        vec![("/os.zi", image.clone(), Behaviour::CutOnce(cut))],
        Some("localhost"),
    );
    let disk = disk_for(&server, "/os.zi");
    let out = disk.update(&["apply", "--timeout", "5"]);
    expect(
        &out,
        0,
        &["resuming with a Range request", "installed os version 5"],
    );
    assert_eq!(disk.slot_state("B"), "trial");
    disk.assert_root_b_is(&image);
    // The resumed request starts at or before the cut, after the first open-ended one.
    let resumed: Vec<u64> = server
        .requests()
        .iter()
        .filter_map(|r| {
            r.strip_prefix("/os.zi bytes=")?
                .strip_suffix('-')?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(resumed.len(), 2, "{:?}", server.requests());
    assert!(
        resumed[1] > resumed[0] && resumed[1] <= cut,
        "{resumed:?} cut at {cut}"
    );
}

#[test]
fn killed_run_continues_on_the_next_run_without_downloading_again() {
    let f = fixture();
    let image = f.bytes("os.zi");
    let server = Server::start(
        vec![("/os.zi", image.clone(), Behaviour::Normal)],
        Some("localhost"),
    );
    let disk = disk_for(&server, "/os.zi");
    // The first run stops after 6 MiB of the root are written (as if killed).
    expect(
        &disk.update(&["apply", "--fail-after", "6291456"]),
        1,
        &["injected failure"],
    );
    assert_eq!(disk.slot_state("B"), "bad");
    disk.assert_active_untouched();
    let text = expect(&disk.update(&["apply"]), 0, &["installed os version 5"]);
    // "...; X MiB of root written, Y MiB already in place; Z MiB downloaded"
    let number = |after: &str| -> f64 {
        let (head, _) = text.split_once(after).unwrap();
        head.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let reused = number(" MiB already in place");
    let downloaded = number(" MiB downloaded");
    #[allow(clippy::cast_precision_loss)]
    let size = image.len() as f64 / f64::from(1 << 20);
    assert!(reused >= 2.0, "{text}");
    assert!(downloaded + 2.0 < size, "{text} (image {size:.1} MiB)");
    disk.assert_root_b_is(&image);
}

#[test]
fn tampered_image_is_refused_and_leaves_backup_bad_and_active_untouched() {
    let f = fixture();
    let mut image = f.bytes("os.zi");
    let at = root_payload_offset(&image, 0.7);
    image[usize::try_from(at).unwrap()] ^= 0x40;
    let server = Server::start(
        vec![("/os.zi", image, Behaviour::Normal)],
        Some("localhost"),
    );
    let disk = disk_for(&server, "/os.zi");
    // check reads no payload: the header and manifest are intact.
    expect(&disk.update(&["check"]), 0, &["update available"]);
    expect(
        &disk.update(&["apply"]),
        3,
        &["payload", "BLAKE3 mismatch", "stays marked bad"],
    );
    assert_eq!(disk.slot_state("B"), "bad");
    disk.assert_active_untouched();
    // The next check still offers version 5 (it did not fail a trial; the download was bad).
    expect(&disk.update(&["check"]), 0, &["update available"]);
}

#[test]
fn server_down_404_and_stall_fail_in_bounded_time_with_a_clear_message() {
    let f = fixture();
    let server = Server::start(
        vec![
            ("/gone.zi", Vec::new(), Behaviour::NotFound),
            ("/slow.zi", f.bytes("os.zi"), Behaviour::Stall),
        ],
        Some("localhost"),
    );
    let disk = disk_for(&server, "/gone.zi");
    expect(
        &disk.update(&["apply"]),
        7,
        &["not found (HTTP 404)", "nothing was written"],
    );
    assert!(disk.unchanged());
    let disk = disk_for(&server, "/slow.zi");
    let started = Instant::now();
    expect(
        &disk.update(&["apply", "--timeout", "2"]),
        7,
        &["timed out"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(disk.unchanged());
    // Nothing listening on the port any more.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let down = https_disk(
        &format!("https://127.0.0.1:{port}/os.zi"),
        server.ca.as_ref().unwrap(),
    );
    let started = Instant::now();
    expect(
        &down.update(&["check", "--timeout", "2"]),
        7,
        &["connection"],
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(down.unchanged());
}

#[test]
fn redirects_are_followed_but_a_loop_is_refused() {
    let f = fixture();
    let server = Server::start(
        vec![
            ("/os.zi", f.bytes("os.zi"), Behaviour::Normal),
            ("/moved.zi", Vec::new(), Behaviour::Redirect("/os.zi")),
            ("/loop-a.zi", Vec::new(), Behaviour::Redirect("/loop-b.zi")),
            ("/loop-b.zi", Vec::new(), Behaviour::Redirect("/loop-a.zi")),
        ],
        Some("localhost"),
    );
    expect(
        &disk_for(&server, "/moved.zi").update(&["check"]),
        0,
        &["update available"],
    );
    let disk = disk_for(&server, "/loop-a.zi");
    expect(&disk.update(&["apply"]), 7, &["redirect"]);
    assert!(disk.unchanged());
}

#[test]
fn wrong_content_type_is_refused() {
    let f = fixture();
    let server = Server::start(
        vec![("/os.zi", f.bytes("os.zi"), Behaviour::WrongType)],
        Some("localhost"),
    );
    let disk = disk_for(&server, "/os.zi");
    expect(
        &disk.update(&["apply"]),
        7,
        &["Content-Type text/html", "not a .zi image"],
    );
    assert!(disk.unchanged());
}

#[test]
fn body_truncated_every_time_fails_after_bounded_retries() {
    let f = fixture();
    let server = Server::start(
        vec![(
            "/os.zi",
            f.bytes("os.zi"),
            Behaviour::CutAlways(root_payload_offset(&f.bytes("os.zi"), 0.6)),
        )],
        Some("localhost"),
    );
    let disk = disk_for(&server, "/os.zi");
    let out = disk.update(&["apply", "--retries", "2"]);
    expect(&out, 7, &["after 2 resumed attempts", "stays marked bad"]);
    assert_eq!(disk.slot_state("B"), "bad");
    disk.assert_active_untouched();
}

#[test]
fn certificate_for_another_host_is_refused() {
    let f = fixture();
    let server = Server::start(
        vec![("/os.zi", f.bytes("os.zi"), Behaviour::Normal)],
        Some("other-host.invalid"),
    );
    let disk = disk_for(&server, "/os.zi");
    expect(&disk.update(&["apply"]), 7, &["TLS", "certificate"]);
    assert!(disk.unchanged());
    assert!(server.sent.load(Ordering::SeqCst) == 0);
}

#[test]
fn image_for_another_layout_is_refused() {
    let f = fixture();
    let server = Server::start(
        vec![("/big.zi", f.bytes("big.zi"), Behaviour::Normal)],
        Some("localhost"),
    );
    let disk = disk_for(&server, "/big.zi");
    let text = expect(
        &disk.update(&["apply"]),
        1,
        &["50331648 bytes", "root partition 3", "nothing was written"],
    );
    assert!(!text.contains("stays marked bad"), "{text}");
    assert!(disk.unchanged());
}

#[test]
fn usb_endpoint_installs_from_a_stick_image() {
    let f = fixture();
    let stick_dir = tempfile::tempdir().unwrap();
    let stick = stick_dir.path().join("stick.img");
    ok(&[
        "usb",
        "create",
        "--zi",
        s(&f.path("os.zi")),
        "-o",
        s(&stick),
    ]);
    let disk = f.disk(&format!(
        "update_endpoint={}\nendpoint_type=USB\n",
        s(&stick)
    ));
    expect(
        &disk.update(&["check"]),
        0,
        &["update available", "stick.img:ZBOOT.ZI"],
    );
    expect(&disk.update(&["apply"]), 0, &["installed os version 5"]);
    assert_eq!(disk.slot_state("B"), "trial");
    disk.assert_root_b_is(&f.bytes("os.zi"));
}

#[test]
fn latest_pointer_over_plain_http_needs_allow_http() {
    let f = fixture();
    let server = Server::start(
        vec![
            (
                "/fleet/latest",
                b"# written by the release job\nimage=os-5.zi\n".to_vec(),
                Behaviour::Normal,
            ),
            ("/fleet/os-5.zi", f.bytes("signed.zi"), Behaviour::Normal),
        ],
        None,
    );
    let url = server.url("/fleet/");
    let disk = f.disk(&format!("update_endpoint={url}\n"));
    expect(&disk.update(&["check"]), 1, &["allow_http=yes"]);
    // allow_http=yes alone would let anyone on the path install an image: refused.
    let disk = f.disk(&format!("update_endpoint={url}\nallow_http=yes\n"));
    for command in ["check", "apply"] {
        expect(
            &disk.update(&[command]),
            1,
            &["plain HTTP", "no public_key=", "allow_http=yes"],
        );
    }
    assert!(disk.unchanged());
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    let key = fs::read_to_string(f.path("release.pub")).unwrap();
    let disk = f.disk(&format!(
        "update_endpoint={url}\nallow_http=yes\npublic_key={}\n",
        key.trim()
    ));
    expect(
        &disk.update(&["check"]),
        0,
        &["update available", "/fleet/os-5.zi"],
    );
    assert!(disk.unchanged());
}

#[test]
fn a_staged_rollout_takes_the_devices_whose_bucket_falls_below_it() {
    let f = fixture();
    let serial = "10000000c0ffee01";
    let bucket = zboot_tools::zbctl::update::rollout_bucket(serial, "os-5.zi");
    let pointer = |rollout: &str| format!("image=os-5.zi\nrollout={rollout}\n").into_bytes();
    let check = |rollout: &str| {
        let server = Server::start(
            vec![
                ("/fleet/latest", pointer(rollout), Behaviour::Normal),
                ("/fleet/os-5.zi", f.bytes("os.zi"), Behaviour::Normal),
            ],
            Some("localhost"),
        );
        let disk = disk_for(&server, "/fleet/");
        let lock = disk.dir.path().join("update.lock");
        let out = zbctl_env(
            &[
                "--image",
                s(&disk.path),
                "update",
                "check",
                "--lock",
                s(&lock),
            ],
            &[("ZBCTL_DEVICE_SERIAL", std::ffi::OsStr::new(serial))],
        );
        assert!(disk.unchanged());
        (out, server.requests())
    };
    // The boundaries: exactly the bucket leaves the device out, one more takes it.
    for (rollout, taken) in [
        ("0".to_string(), false),
        (bucket.to_string(), false),
        ((bucket + 1).to_string(), true),
        ("100".to_string(), true),
    ] {
        let (out, requests) = check(&rollout);
        if taken {
            expect(&out, 0, &["update available", "/fleet/os-5.zi"]);
        } else {
            expect(
                &out,
                6,
                &[
                    &format!("rolling out to {rollout}% of devices"),
                    &format!("serial {serial}, bucket {bucket} of 0-99"),
                ],
            );
            assert!(
                requests.iter().all(|r| !r.contains("os-5.zi")),
                "the image is not even asked for: {requests:?}"
            );
        }
    }
    // Out of range: refused with its line.
    for rollout in ["101", "-1", "half"] {
        let (out, _) = check(rollout);
        expect(
            &out,
            7,
            &[&format!(
                "latest: line 2: rollout={rollout} is not a percentage"
            )],
        );
    }
}

#[test]
fn two_runs_never_overlap() {
    let f = fixture();
    let disk = f.disk("update_endpoint=/nonexistent/stick.img\nendpoint_type=USB\n");
    let lock = fs::File::create(disk.dir.path().join("update.lock")).unwrap();
    lock.try_lock().unwrap();
    expect(
        &disk.update(&["apply"]),
        8,
        &["another zbctl update or install is running"],
    );
    // `zbctl install` takes the same lock: it cannot edit the state and the FAT meanwhile.
    let out = zbctl(&[
        "--image",
        s(&disk.path),
        "install",
        "--lock",
        s(&disk.dir.path().join("update.lock")),
        s(&f.path("os.zi")),
    ]);
    expect(&out, 8, &["another zbctl update or install is running"]);
    assert!(disk.unchanged(), "install wrote while the lock was held");
    drop(lock);
    expect(&disk.update(&["apply"]), 1, &["/nonexistent/stick.img"]);
    // Without --lock, for an --image target both lock the image file itself.
    let image_lock = fs::File::open(&disk.path).unwrap();
    image_lock.try_lock().unwrap();
    expect(
        &zbctl(&["--image", s(&disk.path), "install", s(&f.path("os.zi"))]),
        8,
        &["another zbctl update or install is running"],
    );
    expect(
        &zbctl(&["--image", s(&disk.path), "update", "apply"]),
        8,
        &["another zbctl update or install is running"],
    );
    assert!(disk.unchanged());
    drop(image_lock);
}

#[test]
fn provisioned_key_refuses_an_unsigned_image_before_any_write() {
    let f = fixture();
    let server = Server::start(
        vec![
            ("/os.zi", f.bytes("os.zi"), Behaviour::Normal),
            ("/signed.zi", f.bytes("signed.zi"), Behaviour::Normal),
        ],
        Some("localhost"),
    );
    let key = fs::read_to_string(f.path("release.pub")).unwrap();
    let signed_disk = |path: &str| {
        let url = server.url(path);
        let pem = server.ca.clone().unwrap();
        let key = key.trim().to_string();
        f.disk_in(move |dir| {
            let ca = dir.join("ca.pem");
            fs::write(&ca, pem).unwrap();
            format!("{}public_key={key}\n", https_manifest(&url, &ca))
        })
    };
    let disk = signed_disk("/os.zi");
    expect(&disk.update(&["check"]), 4, &["not signed"]);
    expect(&disk.update(&["apply"]), 4, &["not signed"]);
    assert!(disk.unchanged(), "the disk was written");
    let disk = signed_disk("/signed.zi");
    expect(&disk.update(&["apply"]), 0, &["installed os version 5"]);
    assert_eq!(disk.slot_state("B"), "trial");
    disk.assert_root_b_is(&f.bytes("os.zi"));
}

#[test]
fn image_signed_by_another_key_is_refused_saying_nothing_was_written() {
    let f = fixture();
    let server = Server::start(
        vec![("/other.zi", f.bytes("other.zi"), Behaviour::Normal)],
        Some("localhost"),
    );
    let key = fs::read_to_string(f.path("release.pub")).unwrap();
    let (url, pem) = (server.url("/other.zi"), server.ca.clone().unwrap());
    let disk = f.disk_in(|dir| {
        let ca = dir.join("ca.pem");
        fs::write(&ca, pem).unwrap();
        format!("{}public_key={}\n", https_manifest(&url, &ca), key.trim())
    });
    for command in ["check", "apply"] {
        let text = expect(
            &disk.update(&[command]),
            4,
            &["signed by another key", "nothing was written"],
        );
        assert!(!text.contains("stays marked bad"), "{text}");
    }
    assert!(disk.unchanged(), "the disk was written");
    // The trailer is read once per run, with a bounded range (not the payload stream).
    let trailer_reads = server
        .requests()
        .iter()
        .filter(|r| r.ends_with(&format!("-{}", f.bytes("other.zi").len() - 1)))
        .count();
    assert_eq!(trailer_reads, 2, "{:?}", server.requests());
    assert!(
        server.requests().iter().all(|r| !r.ends_with('-')),
        "an open-ended (payload) request: {:?}",
        server.requests()
    );
}

#[test]
fn running_slot_is_never_the_one_written() {
    let f = fixture();
    let server = Server::start(
        vec![("/os.zi", f.bytes("os.zi"), Behaviour::Normal)],
        Some("localhost"),
    );
    // `zbctl try B` and a reboot: ACTIVE is still A, the system runs from B, and B is the
    // slot an update goes to.
    let disk = disk_for(&server, "/os.zi");
    ok(&["--image", s(&disk.path), "try", "B"]);
    let before = fs::read(&disk.path).unwrap();
    let running_b = "console=ttyAMA0 root=PARTUUID=1a2b3c4d-03 zboot.slot=B zboot.attempt=1";
    let text = expect(
        &disk.update_device(&["apply"], running_b),
        9,
        &[
            "slot B",
            "booted from it",
            "zboot.slot=B",
            "nothing written",
        ],
    );
    assert!(!text.contains("error"), "{text}");
    assert!(
        fs::read(&disk.path).unwrap() == before,
        "the running slot was written"
    );
    // Running from A (the one-shot was not taken yet): B may be written.
    let running_a = "console=ttyAMA0 zboot.slot=A";
    expect(
        &disk.update_device(&["apply"], running_a),
        0,
        &["installed os version 5", "into slot B"],
    );
    disk.assert_root_b_is(&f.bytes("os.zi"));
}

#[test]
fn state_changed_by_another_command_meanwhile_is_not_overwritten() {
    let f = fixture();
    let image = f.bytes("os.zi");
    let pause = root_payload_offset(&image, 0.5);
    let server = Server::start(
        vec![("/os.zi", image, Behaviour::PauseAt(pause))],
        Some("localhost"),
    );
    let disk = disk_for(&server, "/os.zi");
    let lock = disk.dir.path().join("update.lock");
    let child = common::zbctl_command()
        .args([
            "--image",
            s(&disk.path),
            "update",
            "apply",
            "--lock",
            s(&lock),
            "--timeout",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !PAUSED.load(Ordering::SeqCst) {
        assert!(started.elapsed() < Duration::from_secs(30), "no download");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The download is under way (B is marked bad); a command without the lock edits the state.
    ok(&["--image", s(&disk.path), "request-recovery"]);
    RELEASE.store(true, Ordering::SeqCst);
    let out = child.wait_with_output().unwrap();
    expect(
        &out,
        1,
        &["changed while installing", "another zbctl command"],
    );
    let json = disk.status();
    assert_eq!(json["recovery_requested"], true, "the edit was undone");
    assert_eq!(json["active"], "A");
    assert_eq!(disk.slot_state("B"), "bad");
    assert_eq!(disk.slot_state("A"), "good");
}

#[test]
fn file_changed_between_the_cut_and_the_resume_is_refused() {
    let f = fixture();
    let image = f.bytes("os.zi");
    let cut = root_payload_offset(&image, 0.4);
    let later = root_payload_offset(&image, 0.9);
    for (behaviour, why) in [
        (
            Behaviour::CutThenChange(cut, later),
            "ETag \"zi-1\" then \"zi-2\"",
        ),
        (Behaviour::CutThenNoEtag(cut), "the resumed answer has none"),
    ] {
        let server = Server::start(
            vec![("/os.zi", image.clone(), behaviour)],
            Some("localhost"),
        );
        let disk = disk_for(&server, "/os.zi");
        expect(
            &disk.update(&["apply", "--timeout", "5"]),
            7,
            &[
                "the file changed on the server during the download",
                why,
                "stays marked bad",
            ],
        );
        assert_eq!(disk.slot_state("B"), "bad");
        disk.assert_active_untouched();
    }
}

#[test]
fn dripping_or_stalling_server_mid_body_is_cut_off_in_bounded_time() {
    let f = fixture();
    let image = f.bytes("os.zi");
    let at = root_payload_offset(&image, 0.5);
    for (behaviour, why) in [
        (Behaviour::Drip(at), "too slow"),
        (Behaviour::StallAt(at), "timeout"),
    ] {
        let server = Server::start(
            vec![("/os.zi", image.clone(), behaviour)],
            Some("localhost"),
        );
        let disk = disk_for(&server, "/os.zi");
        let started = Instant::now();
        expect(
            &disk.update(&["apply", "--timeout", "2", "--retries", "1"]),
            7,
            &[why, "after 1 resumed attempts", "stays marked bad"],
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(disk.slot_state("B"), "bad");
        disk.assert_active_untouched();
    }
}

// The update reports (report_url=) against the same server.
#[path = "update/reports.rs"]
mod reports;
