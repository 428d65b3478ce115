//! Hostile requests against the real proxy binary (issue 6, part 3), beyond `bad_requests.rs`:
//! wire encodings a correct signer may use are accepted and every mutation of a signed request is
//! refused; nonces cannot be replayed under another encoding and their memory is visible and
//! bounded; oversized bodies and headers get 413/431 and the server keeps serving; clients that
//! trickle their headers or body are cut off without holding anyone else up.

use crate::common;

use common::TestEnv;
use image_store_proxy::api::signature;
use reqwest::Url;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Params = Vec<(String, String)>;
/// Changes an encoded request after it was signed.
type Mutation = fn(String) -> String;

fn pairs(list: &[(&str, &str)]) -> Params {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The parameters of the search used throughout: repeated `q`, an empty parameter, and a value
/// with non-ASCII text, an astral character, and every reserved character that matters to forms.
fn search_params() -> Params {
    pairs(&[
        ("q", "lucid"),
        ("q", "LTS"),
        ("empty", ""),
        ("note", "café \u{2615} \u{1F600} a+b=c&d/e?f%g#h ~*'()!"),
    ])
}

/// How the pairs travel on the wire: each of these is a correct encoding of the same pairs.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// As the UI writes them: RFC 3986 unreserved bytes kept, upper-case `%XX`, space as `%20`.
    Canonical,
    LowerCaseHex,
    /// HTML form style: space as `+` (a literal `+` stays `%2B`).
    PlusForSpace,
    /// Every byte `%XX`, even letters and digits.
    EncodeEverything,
    /// Pairs in reverse order (the signature sorts them).
    Reversed,
    /// `empty` as a bare name, no `=`.
    BareEmptyName,
}

const WIRES: [Wire; 6] = [
    Wire::Canonical,
    Wire::LowerCaseHex,
    Wire::PlusForSpace,
    Wire::EncodeEverything,
    Wire::Reversed,
    Wire::BareEmptyName,
];

fn encode_all(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn lower_hex(encoded: &str) -> String {
    let mut out = String::new();
    let mut rest = encoded;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        out.push('%');
        out.push_str(&rest[at + 1..at + 3].to_ascii_lowercase());
        rest = &rest[at + 3..];
    }
    out + rest
}

fn wire(params: &Params, how: Wire) -> String {
    let mut ordered: Vec<&(String, String)> = params.iter().collect();
    if matches!(how, Wire::Reversed) {
        ordered.reverse();
    }
    ordered
        .iter()
        .map(|(name, value)| {
            let (n, v) = match how {
                Wire::EncodeEverything => (encode_all(name), encode_all(value)),
                _ => (signature::encode(name), signature::encode(value)),
            };
            match how {
                Wire::LowerCaseHex => format!("{}={}", lower_hex(&n), lower_hex(&v)),
                Wire::PlusForSpace => format!("{n}={}", v.replace("%20", "+")),
                Wire::BareEmptyName if v.is_empty() => n,
                _ => format!("{n}={v}"),
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Sends `raw` as the query of a GET or the form body of a POST; returns status and JSON body.
async fn send_raw(env: &TestEnv, method: &str, path: &str, raw: &str) -> (u16, Value) {
    let mut url = Url::parse(&format!("{}{path}", env.proxy_url())).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let request = if method == "GET" {
        url.set_query(Some(raw));
        http.get(url)
    } else {
        http.post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(raw.to_string())
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn sign(env: &TestEnv, method: &str, path: &str, params: Params) -> Params {
    let url = Url::parse(&format!("{}{path}", env.proxy_url())).unwrap();
    env.client().sign(method, &url, params)
}

fn found_uris(body: &Value) -> Vec<String> {
    body["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images in {body}"))
        .iter()
        .map(|image| image["uri"].as_str().unwrap().to_string())
        .collect()
}

fn assert_refused(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    assert_eq!(body["error-message"], "Bad request signature", "{what}");
}

fn nonce_of(params: &Params) -> String {
    params.iter().find(|(n, _)| n == "Nonce").unwrap().1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_correct_encoding_is_accepted() {
    let env = TestEnv::start().await;
    let lucid = env.image_uri("lucid");

    for method in ["GET", "POST"] {
        for how in WIRES {
            let signed = sign(&env, method, "/api/search", search_params());
            let (status, body) = send_raw(&env, method, "/api/search", &wire(&signed, how)).await;
            assert_eq!(status, 200, "{method} {how:?}: {body}");
            assert_eq!(found_uris(&body), vec![lucid.clone()], "{method} {how:?}");
        }
    }

    // ISO-8859-1, as the servlet's HTTP client encodes POST bodies by default: `é` as `%E9`.
    let signed = sign(
        &env,
        "POST",
        "/api/search",
        pairs(&[("q", "lucid"), ("latin", "café")]),
    );
    let latin1 = wire(&signed, Wire::Canonical).replace("caf%C3%A9", "caf%E9");
    let (status, body) = send_raw(&env, "POST", "/api/search", &latin1).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_of_a_signed_request_is_refused() {
    let env = TestEnv::start().await;
    // Mutations of the encoded request, each of a freshly signed one.
    let mutations: [(&str, Mutation); 11] = [
        ("a literal + sent raw (it means a space)", |w| {
            w.replacen("a%2Bb", "a+b", 1)
        }),
        ("the empty parameter dropped", |w| {
            w.replacen("&empty=", "", 1)
        }),
        ("an empty parameter added", |w| w + "&extra="),
        ("a repeated value duplicated instead", |w| {
            w.replacen("q=LTS", "q=lucid", 1)
        }),
        ("one of the repeated values dropped", |w| {
            w.replacen("&q=LTS", "", 1)
        }),
        ("a value's case changed", |w| {
            w.replacen("q=lucid", "q=LUCID", 1)
        }),
        ("é decomposed (NFD) instead of precomposed", |w| {
            w.replacen("caf%C3%A9", "cafe%CC%81", 1)
        }),
        ("double percent-encoding", |w| {
            w.replacen("caf%C3%A9", "caf%25C3%25A9", 1)
        }),
        ("a NUL byte appended to a value", |w| {
            w.replacen("q=LTS", "q=LTS%00", 1)
        }),
        ("a parameter renamed by case", |w| {
            w.replacen("empty=", "Empty=", 1)
        }),
        ("a trailing space in a value", |w| {
            w.replacen("q=lucid", "q=lucid%20", 1)
        }),
    ];
    for (what, mutate) in mutations {
        let signed = sign(&env, "GET", "/api/search", search_params());
        let genuine = wire(&signed, Wire::Canonical);
        let mutated = mutate(genuine.clone());
        assert_ne!(mutated, genuine, "the mutation {what:?} changed nothing");
        let (status, body) = send_raw(&env, "GET", "/api/search", &mutated).await;
        assert_refused(status, &body, what);
        // A refused forgery does not burn the genuine request's nonce.
        let (status, body) = send_raw(&env, "GET", "/api/search", &genuine).await;
        assert_eq!(status, 200, "genuine after {what}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_parameters_may_appear_once_only() {
    let env = TestEnv::start().await;
    // The signing parameters themselves may appear once only, even if one copy is genuine.
    for name in ["Signature", "Nonce", "Expires", "SignatureMethod"] {
        let mut signed = sign(&env, "GET", "/api/search", search_params());
        let copy = signed.iter().find(|(n, _)| n == name).unwrap().clone();
        signed.push(copy);
        let (status, body) =
            send_raw(&env, "GET", "/api/search", &wire(&signed, Wire::Canonical)).await;
        assert_refused(status, &body, &format!("{name} twice"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_through_another_host_name_is_refused() {
    let env = TestEnv::start().await;
    // The Host is signed: the same request through another name for the proxy is refused.
    let signed = sign(&env, "GET", "/api/search", search_params());
    let url = format!(
        "{}/api/search?{}",
        env.proxy_url(),
        wire(&signed, Wire::Canonical)
    );
    let reply = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .header("host", "proxy.example:52780")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_under_another_encoding_and_expired_requests_are_refused() {
    let env = TestEnv::start().await;
    let signed = sign(&env, "POST", "/api/search", search_params());
    let nonce = nonce_of(&signed);
    let (status, _) = send_raw(&env, "POST", "/api/search", &wire(&signed, Wire::Canonical)).await;
    assert_eq!(status, 200);
    for how in WIRES {
        for method in ["POST", "GET"] {
            let (status, body) = send_raw(&env, method, "/api/search", &wire(&signed, how)).await;
            assert_refused(status, &body, &format!("replay {method} {how:?}"));
        }
    }
    // The POST replays were refused for the nonce (the GETs already for the method).
    let log = env.proxy_log();
    assert_eq!(
        log.matches(&format!("nonce {nonce} replayed")).count(),
        WIRES.len(),
        "{log}"
    );

    // Signed correctly, but the time is wrong or not a time at all.
    let url = Url::parse(&format!("{}/api/dashboard", env.proxy_url())).unwrap();
    let host = signature::signing_host(url.host_str().unwrap(), url.port());
    let now = image_store_proxy::db::now_unix();
    for expires in [
        (now - 1).to_string(),
        (now - 86_400 * 365).to_string(),
        "0".into(),
        "-1".into(),
        "".into(),
        "soon".into(),
        "1e12".into(),
        format!("{now}.5"),
        "99999999999999999999999".into(),
    ] {
        let mut params = Params::new();
        for (name, value) in [
            ("SignatureMethod", signature::SIGNATURE_METHOD),
            ("SignatureVersion", signature::SIGNATURE_VERSION),
            ("Version", signature::API_VERSION),
            ("ClientId", "c"),
            ("Expires", expires.as_str()),
            ("Nonce", &format!("expired-{expires}")),
        ] {
            params.push((name.to_string(), value.to_string()));
        }
        let sts = signature::string_to_sign("GET", &host, "/api/dashboard", &params);
        params.push((
            "Signature".into(),
            signature::sign(common::SECRET.as_bytes(), &sts),
        ));
        let (status, body) = send_raw(
            &env,
            "GET",
            "/api/dashboard",
            &wire(&params, Wire::Canonical),
        )
        .await;
        assert_refused(status, &body, &format!("Expires {expires:?}"));
    }
}

/// The replay guard's size as `/metrics` reports it.
async fn nonces_remembered(env: &TestEnv) -> (u64, u64) {
    let text = reqwest::get(format!("{}/metrics", env.proxy_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    (
        gauge("image_store_proxy_nonces_remembered"),
        gauge("image_store_proxy_nonces_capacity"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_fresh_nonces_is_counted_bounded_and_never_replayable() {
    let env = TestEnv::start().await;
    let (before, capacity) = nonces_remembered(&env).await;
    assert_eq!(capacity, image_store_proxy::limits::NONCE_CAPACITY as u64);
    const BURST: usize = 300;
    let requests: Vec<Params> = (0..BURST)
        .map(|_| sign(&env, "POST", "/api/states", Params::new()))
        .collect();
    let sends = requests.iter().map(|params| {
        let env = &env;
        async move { send_raw(env, "POST", "/api/states", &wire(params, Wire::Canonical)).await }
    });
    for (status, body) in futures_util::future::join_all(sends).await {
        assert_eq!(status, 200, "{body}");
    }
    let (after, _) = nonces_remembered(&env).await;
    assert_eq!(after - before, BURST as u64);
    assert!(after <= capacity);
    // Every one of them is remembered: each replay is refused and adds nothing.
    let replays = requests.iter().map(|params| {
        let env = &env;
        async move {
            send_raw(
                env,
                "POST",
                "/api/states",
                &wire(params, Wire::LowerCaseHex),
            )
            .await
        }
    });
    for (status, body) in futures_util::future::join_all(replays).await {
        assert_refused(status, &body, "replay of the burst");
    }
    assert_eq!(nonces_remembered(&env).await.0, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_headers_are_refused_and_the_server_keeps_serving() {
    let env = TestEnv::start().await;
    let limit = image_store_proxy::limits::MAX_BODY_BYTES;
    let uri = env.image_uri("karmic");
    let pair_len = wire(&pairs(&[("image-uri", &uri)]), Wire::Canonical).len() + 1;
    let params: Params = (0..limit / pair_len + 1)
        .map(|_| ("image-uri".to_string(), uri.clone()))
        .collect();
    let signed = sign(&env, "POST", "/api/states", params);
    let (status, body) =
        send_raw(&env, "POST", "/api/states", &wire(&signed, Wire::Canonical)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        body["error-message"],
        format!("The request body is larger than {limit} bytes")
    );

    let header_limit = image_store_proxy::limits::MAX_HEADER_BYTES;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let dashboard = format!("{}/api/dashboard", env.proxy_url());
    let one_big_header = http
        .get(&dashboard)
        .header("x-padding", "a".repeat(header_limit + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(one_big_header.status().as_u16(), 431);
    let long_request_line = http
        .get(format!("{dashboard}?q={}", "a".repeat(header_limit + 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(long_request_line.status().as_u16(), 431);
    let mut many = http.get(&dashboard);
    for n in 0..200 {
        many = many.header(format!("x-h{n}"), "1");
    }
    assert_eq!(many.send().await.unwrap().status().as_u16(), 431);

    // Still serving, and the refused requests changed nothing.
    assert_eq!(env.state(&uri).await["status"], "uninstalled");
    assert_eq!(env.dashboard().await["images"].as_array().unwrap().len(), 2);
}

/// Opens a connection and trickles `bytes` down it (see [`trickle_on`]).
async fn trickle(
    addr: String,
    bytes: Vec<u8>,
    pause: Duration,
    give_up: Duration,
) -> (String, Option<Duration>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    trickle_on(stream, bytes, pause, give_up).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_without_holding_up_others() {
    use image_store_proxy::limits::{BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT};
    let env = TestEnv::start().await;
    let addr = env.proxy_url().trim_start_matches("http://").to_string();
    let give_up = HEADER_READ_TIMEOUT.max(BODY_READ_TIMEOUT) + Duration::from_secs(10);

    // 64 clients sending headers a byte every 300 ms: none would finish within the timeout.
    let headers = format!(
        "GET /api/dashboard HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n\r\n",
        "s".repeat(64)
    )
    .into_bytes();
    let slow_headers: Vec<_> = (0..64)
        .map(|_| {
            tokio::spawn(trickle(
                addr.clone(),
                headers.clone(),
                Duration::from_millis(300),
                give_up,
            ))
        })
        .collect();
    // One client whose headers are complete but whose body trickles a byte a second.
    let signed = sign(&env, "POST", "/api/states", Params::new());
    let body = wire(&signed, Wire::Canonical);
    let head = format!(
        "POST /api/states HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let slow_body = tokio::spawn(async move {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        trickle_on(stream, body.into_bytes(), Duration::from_secs(1), give_up).await
    });

    // Meanwhile everyone else is served promptly.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..20 {
        let started = Instant::now();
        env.dashboard().await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a dashboard took {:?} beside slow clients",
            started.elapsed()
        );
    }

    for client in slow_headers {
        let (answer, closed) = client.await.unwrap();
        let closed =
            closed.unwrap_or_else(|| panic!("a slow client was never cut off ({answer:?})"));
        assert!(
            closed >= HEADER_READ_TIMEOUT - Duration::from_secs(1)
                && closed < HEADER_READ_TIMEOUT + Duration::from_secs(5),
            "cut off after {closed:?}"
        );
        assert!(!answer.contains(" 200 "), "{answer}");
    }
    let (answer, closed) = slow_body.await.unwrap();
    assert!(
        closed.is_some(),
        "the slow body was never cut off: {answer:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("The request body did not arrive within"),
        "{answer}"
    );
}

/// Sends `bytes` on an open stream one at a time, `pause` apart, until the server closes it or
/// `give_up` passes; returns what the server answered and when it closed the connection, if it did.
async fn trickle_on(
    mut stream: TcpStream,
    bytes: Vec<u8>,
    pause: Duration,
    give_up: Duration,
) -> (String, Option<Duration>) {
    let started = Instant::now();
    let (mut reader, mut writer) = stream.split();
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let write = async {
        for byte in bytes {
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        // All sent (the server never cut us off): the read side decides.
        std::future::pending::<()>().await;
    };
    let closed = tokio::select! {
        closed = read => closed,
        () = write => None,
        () = tokio::time::sleep(give_up) => None,
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}
