//! An HTTPS server on the host for the Linux guest's `zbctl update`: QEMU's user-mode
//! network (`-netdev user`) maps the guest's 10.0.2.2 to the host's loopback, so the
//! certificate (self-signed, rcgen) names that address. It serves fixed files with single
//! byte ranges (`Range: bytes=a-b`, what `zbctl update` asks for) and keeps the body of
//! every `POST` (update reports).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// The host as the guest reaches it through QEMU's user-mode network.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

/// `(path, body)` of each `POST`, in arrival order.
pub type Posts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

pub struct FileServer {
    pub port: u16,
    /// The certificate's PEM: the guest's `ca_cert=`.
    pub ca_pem: String,
    /// `METHOD path` of each request, in arrival order.
    pub requests: Arc<Mutex<Vec<String>>>,
    pub posts: Posts,
}

impl FileServer {
    /// Serves `files` (path → bytes) on a free loopback port.
    pub fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let certified = rcgen::generate_simple_self_signed(vec![HOST_FROM_GUEST.to_owned()])
            .expect("a certificate for the guest's view of the host");
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap(),
        );
        let files = Arc::new(files);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let posts: Posts = Arc::new(Mutex::new(Vec::new()));
        let (thread_requests, thread_posts) = (requests.clone(), posts.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, files, requests, posts) = (
                    config.clone(),
                    files.clone(),
                    thread_requests.clone(),
                    thread_posts.clone(),
                );
                std::thread::spawn(move || {
                    let Ok(connection) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let stream = rustls::StreamOwned::new(connection, tcp);
                    // A connection the guest drops is its business: the test reads the
                    // guest's console and the disk.
                    let _ = answer(stream, &files, &requests, &posts);
                });
            }
        });
        Self {
            port,
            ca_pem: certified.cert.pem(),
            requests,
            posts,
        }
    }

    /// The URL of `path` as the guest sees it.
    pub fn guest_url(&self, path: &str) -> String {
        format!("https://{HOST_FROM_GUEST}:{}{path}", self.port)
    }
}

/// Requests on one connection until the client closes it.
fn answer(
    stream: impl Read + Write,
    files: &HashMap<String, Vec<u8>>,
    requests: &Mutex<Vec<String>>,
    posts: &Mutex<Vec<(String, Vec<u8>)>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut words = request.split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let path = words.next().unwrap_or("/").to_owned();
        let (mut range, mut length) = (None, 0_usize);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let Some((name, value)) = header.trim_end().split_once(':') else {
                break;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("range") {
                range = value.strip_prefix("bytes=").and_then(|bounds| {
                    let (first, last) = bounds.split_once('-')?;
                    Some((first.parse::<usize>().ok()?, last.parse::<usize>().ok()))
                });
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            }
        }
        requests.lock().unwrap().push(format!("{method} {path}"));
        if method == "POST" {
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            posts.lock().unwrap().push((path, body));
            let out = reader.get_mut();
            out.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?;
            out.flush()?;
            continue;
        }
        let out = reader.get_mut();
        let Some(bytes) = files.get(&path) else {
            out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            out.flush()?;
            continue;
        };
        match range {
            Some((first, last)) if first < bytes.len() => {
                let last = last.unwrap_or(bytes.len() - 1).min(bytes.len() - 1);
                let body = &bytes[first..=last];
                write!(
                    out,
                    "HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n\
                     Content-Range: bytes {first}-{last}/{}\r\nContent-Length: {}\r\n\r\n",
                    bytes.len(),
                    body.len()
                )?;
                out.write_all(body)?;
            }
            _ => {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {}\r\n\r\n",
                    bytes.len()
                )?;
                out.write_all(bytes)?;
            }
        }
        out.flush()?;
    }
}
