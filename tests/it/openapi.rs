//! `ui-api/openapi.yaml` is the contract, and this test keeps it true: the real proxy (binary on
//! loopback, fake-store upstream) is driven through every call, every action and every error, and
//! each reply is checked against the schema the contract gives for its path, method, status and
//! content type. Every object schema is closed (`additionalProperties: false`), so a reply that
//! gains an undocumented key or loses a required one fails, as does a documented path or method
//! the router does not serve, or a path the router serves that the contract does not list.

use crate::common;

use common::{TestEnv, state_in};
use image_store_proxy::api::signature;
use reqwest::Url;
use serde_json::Value;
use std::collections::BTreeSet;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const CONTRACT: &str = include_str!("../../ui-api/openapi.yaml");
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// A reply as it came over the wire.
#[derive(Debug)]
struct Captured {
    what: String,
    status: u16,
    content_type: String,
    location: Option<String>,
    body: String,
}

impl Captured {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.what, self.body))
    }
}

struct Contract {
    doc: Value,
}

impl Contract {
    fn load() -> Self {
        let doc: Value = serde_norway::from_str(CONTRACT).expect("ui-api/openapi.yaml parses");
        assert_eq!(doc["openapi"], "3.1.0");
        Contract { doc }
    }

    /// Follows `$ref`s (local ones only: the contract is one file).
    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {reference}"));
            value = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        }
        value
    }

    fn paths(&self) -> BTreeSet<String> {
        self.doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect()
    }

    /// Every object schema anywhere in the contract says whether it admits other keys: the
    /// conformance check is only as strict as the schemas are closed.
    fn check_schemas_are_closed(&self, value: &Value, at: &str) {
        match value {
            Value::Object(map) => {
                if map.get("type") == Some(&Value::from("object")) {
                    assert!(
                        map.contains_key("additionalProperties"),
                        "the object schema at {at} must say additionalProperties"
                    );
                }
                for (key, inner) in map {
                    self.check_schemas_are_closed(inner, &format!("{at}/{key}"));
                }
            }
            Value::Array(items) => {
                for (i, inner) in items.iter().enumerate() {
                    self.check_schemas_are_closed(inner, &format!("{at}/{i}"));
                }
            }
            _ => {}
        }
    }

    /// The documented response for `status` of `method` on `path`.
    fn response(&self, path: &str, method: &str, status: u16) -> &Value {
        let operation = &self.doc["paths"][path][method.to_ascii_lowercase()];
        assert!(operation.is_object(), "the contract has no {method} {path}");
        let response = &operation["responses"][status.to_string()];
        assert!(
            !response.is_null(),
            "{method} {path} answered {status}, which the contract does not list"
        );
        self.resolve(response)
    }

    /// `got` must be what `path`/`method` documents for its status.
    fn conforms(&self, path: &str, method: &str, got: &Captured) -> Value {
        let response = self.response(path, method, got.status);
        self.matches(response, got)
    }

    /// `got` against a response object (`components/responses/...` for replies no path lists).
    fn matches(&self, response: &Value, got: &Captured) -> Value {
        let response = self.resolve(response);
        if let Some(location) = response.pointer("/headers/Location/schema") {
            let found = Value::from(got.location.clone().unwrap_or_default());
            self.validate_or_panic(location, &found, &format!("{}: Location", got.what));
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return Value::Null;
        };
        let media = got.content_type.split(';').next().unwrap_or("").trim();
        let schema = &content.get(media).unwrap_or_else(|| {
            panic!(
                "{}: content type {media:?} is not documented (documented: {:?})",
                got.what,
                content.keys().collect::<Vec<_>>()
            )
        })["schema"];
        if media == "application/json" {
            assert!(got.body.is_ascii(), "{}: a non-ASCII body", got.what);
            let body = got.json();
            self.validate_or_panic(schema, &body, &got.what);
            body
        } else {
            self.validate_or_panic(schema, &Value::from(got.body.clone()), &got.what);
            Value::Null
        }
    }

    fn validate_or_panic(&self, schema: &Value, value: &Value, what: &str) {
        let mut errors = Vec::new();
        self.validate(schema, value, "$", &mut errors);
        assert!(
            errors.is_empty(),
            "{what} does not conform to ui-api/openapi.yaml:\n  {}\nbody: {value}",
            errors.join("\n  ")
        );
    }

    /// The subset of JSON Schema the contract uses: type, const, enum, required, properties,
    /// additionalProperties, items, minimum, maximum, format (uri, date-time).
    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if let Some(constant) = schema.get("const")
            && value != constant
        {
            errors.push(format!("{at}: {value} is not {constant}"));
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        let kind = schema["type"].as_str().unwrap_or_else(|| {
            errors.push(format!("{at}: the contract's schema has no type: {schema}"));
            ""
        });
        match kind {
            "object" => {
                let Some(object) = value.as_object() else {
                    errors.push(format!("{at}: {value} is not an object"));
                    return;
                };
                for required in schema["required"].as_array().into_iter().flatten() {
                    let name = required.as_str().unwrap();
                    if !object.contains_key(name) {
                        errors.push(format!("{at}: the required key {name:?} is missing"));
                    }
                }
                for (key, inner) in object {
                    let here = format!("{at}.{key}");
                    match schema["properties"].get(key) {
                        Some(property) => self.validate(property, inner, &here, errors),
                        None => match &schema["additionalProperties"] {
                            Value::Bool(false) => {
                                errors.push(format!("{here}: a key the contract does not list"))
                            }
                            Value::Object(_) => {
                                self.validate(&schema["additionalProperties"], inner, &here, errors)
                            }
                            _ => {}
                        },
                    }
                }
            }
            "array" => match value.as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        self.validate(&schema["items"], item, &format!("{at}[{i}]"), errors);
                    }
                }
                None => errors.push(format!("{at}: {value} is not an array")),
            },
            "string" => match value.as_str() {
                Some(text) => {
                    let format = schema["format"].as_str();
                    if format == Some("uri") && !Url::parse(text).is_ok_and(|url| url.has_host()) {
                        errors.push(format!("{at}: {text:?} is not an absolute URI"));
                    }
                    if format == Some("date-time") && OffsetDateTime::parse(text, &Rfc3339).is_err()
                    {
                        errors.push(format!("{at}: {text:?} is not an RFC 3339 time"));
                    }
                }
                None => errors.push(format!("{at}: {value} is not a string")),
            },
            "integer" | "number" => {
                let number = if kind == "integer" {
                    value.as_i64().map(|n| n as f64)
                } else {
                    value.as_f64()
                };
                match number {
                    Some(n) => {
                        if schema["minimum"].as_f64().is_some_and(|min| n < min) {
                            errors.push(format!("{at}: {n} is below {}", schema["minimum"]));
                        }
                        if schema["maximum"].as_f64().is_some_and(|max| n > max) {
                            errors.push(format!("{at}: {n} is above {}", schema["maximum"]));
                        }
                    }
                    None => errors.push(format!("{at}: {value} is not an {kind}")),
                }
            }
            "boolean" => {
                if !value.is_boolean() {
                    errors.push(format!("{at}: {value} is not a boolean"));
                }
            }
            "" => {}
            other => errors.push(format!("{at}: the validator knows no type {other:?}")),
        }
    }
}

/// Sends requests as the Store servlet does (or unsigned), keeping status, headers and raw body.
struct Wire<'a> {
    env: &'a TestEnv,
    http: reqwest::Client,
}

impl Wire<'_> {
    fn url(&self, path: &str) -> Url {
        Url::parse(&self.env.proxy_url())
            .unwrap()
            .join(path)
            .unwrap()
    }

    async fn signed(&self, method: &str, target: &str, params: &[(&str, &str)]) -> Captured {
        let url = self.url(target);
        let params = params
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let signed = self.env.client().sign(method, &url, params);
        self.send(method, url, &signed).await
    }

    async fn send(&self, method: &str, mut url: Url, params: &[(String, String)]) -> Captured {
        let encoded = params
            .iter()
            .map(|(n, v)| format!("{}={}", signature::encode(n), signature::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let request = if method == "GET" {
            if !encoded.is_empty() {
                url.set_query(Some(&encoded));
            }
            self.http.get(url.clone())
        } else {
            self.http
                .request(method.parse().unwrap(), url.clone())
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(encoded)
        };
        self.capture(method, &url, request).await
    }

    async fn capture(&self, method: &str, url: &Url, request: reqwest::RequestBuilder) -> Captured {
        let response = request.send().await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (content_type, location) = (header("content-type"), header("location"));
        Captured {
            what: format!("{method} {}", url.path()),
            status: response.status().as_u16(),
            content_type: content_type.unwrap_or_default(),
            location,
            body: response.text().await.unwrap(),
        }
    }
}

/// The contract lists exactly the paths the router serves, and every object schema is closed.
#[test]
fn the_contract_lists_exactly_the_routed_paths() {
    let contract = Contract::load();
    let routed: BTreeSet<String> = image_store_proxy::api::PATHS
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(contract.paths(), routed);
    contract.check_schemas_are_closed(&contract.doc, "#");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_conforms_to_the_contract() {
    let contract = Contract::load();
    let env = TestEnv::start().await;
    let wire = Wire {
        env: &env,
        http: reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };
    let karmic = env.image_uri("karmic");
    let lucid = env.image_uri("lucid");
    let key = image_store_proxy::catalog::model::image_key(&karmic);
    const ACTION: &str = "/api/images/{key}/{action}";
    let action = |name: &str| format!("/api/images/{key}/{name}");

    // Every documented path and method is routed (not the router's 404 or 405) and answers as
    // documented. Actions are probed with `cancel`: on an idle image it changes nothing.
    for path in contract.paths() {
        let concrete = path
            .replace("{key}", &key)
            .replace("{action}", "cancel")
            .replace("{file}", "store.css");
        for method in METHODS {
            if contract.doc["paths"][&path][method].is_null() {
                continue;
            }
            let method = method.to_ascii_uppercase();
            let got = if path.starts_with("/api/") {
                wire.signed(&method, &concrete, &[]).await
            } else {
                let url = wire.url(&concrete);
                wire.capture(
                    &method,
                    &url,
                    wire.http.request(method.parse().unwrap(), url.clone()),
                )
                .await
            };
            assert!(
                got.status != 404 && got.status != 405,
                "{method} {path} is documented but not routed: {got:?}"
            );
            contract.conforms(&path, &method, &got);
        }
    }

    // The catalog calls.
    let page = contract.conforms(
        "/api/dashboard",
        "GET",
        &wire.signed("GET", "/api/dashboard", &[]).await,
    );
    assert_eq!(page["images"].as_array().unwrap().len(), 2);
    contract.conforms(
        "/api/dashboard",
        "POST",
        &wire.signed("POST", "/api/dashboard", &[]).await,
    );
    let found = contract.conforms(
        "/api/search",
        "GET",
        &wire.signed("GET", "/api/search", &[("q", "lucid")]).await,
    );
    assert_eq!(found["images"][0]["uri"], lucid.as_str());
    contract.conforms(
        "/api/search",
        "POST",
        &wire.signed("POST", "/api/search", &[("q", "karmic")]).await,
    );
    let states = contract.conforms(
        "/api/states",
        "POST",
        &wire
            .signed(
                "POST",
                "/api/states",
                &[("image-uri", &karmic), ("image-uri", &lucid)],
            )
            .await,
    );
    assert_eq!(states["states"].as_array().unwrap().len(), 2);
    contract.conforms(
        "/api/states",
        "GET",
        &wire
            .signed("GET", "/api/states", &[("image-uri", &karmic)])
            .await,
    );

    // install, then cancel while the (slowed) download runs.
    env.store.faults().bytes_per_second = Some(256 << 10);
    let pressed = contract.conforms(
        ACTION,
        "POST",
        &wire.signed("POST", &action("install"), &[]).await,
    );
    assert_eq!(pressed["state"]["status"], "downloading", "{pressed}");
    env.wait_for(&karmic, "some bytes", |s| {
        s["progress-percentage"].as_u64() > Some(0)
    })
    .await;
    let running = contract.conforms(
        "/api/states",
        "POST",
        &wire
            .signed("POST", "/api/states", &[("image-uri", &karmic)])
            .await,
    );
    assert!(state_in(&running, &karmic).unwrap()["actions"]["cancel"].is_string());
    let cancelled = contract.conforms(
        ACTION,
        "POST",
        &wire.signed("POST", &action("cancel"), &[]).await,
    );
    assert!(cancelled["state"].is_object());
    env.wait_for(&karmic, "the cancel", |s| s["install-state"] == "cancelled")
        .await;
    env.store.faults().bytes_per_second = None;

    // A failure, seen by a states poll and a dashboard whose refresh fails too; then clear-error.
    env.store.faults().status = Some(404);
    let lucid_key = image_store_proxy::catalog::model::image_key(&lucid);
    let lucid_action = |name: &str| format!("/api/images/{lucid_key}/{name}");
    contract.conforms(
        ACTION,
        "POST",
        &wire.signed("POST", &lucid_action("install"), &[]).await,
    );
    env.wait_for(&lucid, "the failure", |s| s["error-message"].is_string())
        .await;
    let failed = contract.conforms(
        "/api/states",
        "POST",
        &wire.signed("POST", "/api/states", &[]).await,
    );
    let failed = state_in(&failed, &lucid).unwrap();
    assert_eq!(failed["actions"].as_object().unwrap().len(), 2, "{failed}");
    let stale = contract.conforms(
        "/api/dashboard",
        "GET",
        &wire.signed("GET", "/api/dashboard", &[]).await,
    );
    assert!(stale["error-message"].is_string(), "{stale}");
    let cleared = contract.conforms(
        ACTION,
        "POST",
        &wire.signed("POST", &lucid_action("clear-error"), &[]).await,
    );
    assert!(cleared["state"]["error-message"].is_null(), "{cleared}");
    env.store.faults().status = None;

    // Installed: ids, and the other version of the product reads as an upgrade.
    contract.conforms(
        ACTION,
        "POST",
        &wire.signed("POST", &action("install"), &[]).await,
    );
    env.wait_for_status(&karmic, "installed").await;
    let page = contract.conforms(
        "/api/dashboard",
        "GET",
        &wire.signed("GET", "/api/dashboard", &[]).await,
    );
    assert!(state_in(&page, &karmic).unwrap()["emi"].is_string());
    assert_eq!(state_in(&page, &lucid).unwrap()["is-upgrade"], true);
    let again = contract.conforms(
        ACTION,
        "POST",
        &wire.signed("POST", &action("install"), &[]).await,
    );
    assert_eq!(again["state"]["status"], "installed");

    // Every error, each as its documented reply.
    let unsigned = wire.send("GET", wire.url("/api/dashboard"), &[]).await;
    assert_eq!(unsigned.status, 401);
    contract.conforms("/api/dashboard", "GET", &unsigned);
    let forged = env
        .client()
        .sign("POST", &wire.url(&action("install")), Vec::new());
    let forged: Vec<_> = forged
        .into_iter()
        .map(|(n, v)| {
            if n == "Nonce" {
                (n, "1".to_string())
            } else {
                (n, v)
            }
        })
        .collect();
    let refused = wire
        .send("POST", wire.url(&action("install")), &forged)
        .await;
    assert_eq!(refused.status, 401);
    contract.conforms(ACTION, "POST", &refused);
    let unknown_image = wire
        .signed("POST", "/api/images/0123456789abcdef/install", &[])
        .await;
    assert_eq!(unknown_image.status, 404);
    contract.conforms(ACTION, "POST", &unknown_image);
    let unknown_action = wire.signed("POST", &action("explode"), &[]).await;
    assert_eq!(unknown_action.status, 404);
    contract.conforms(ACTION, "POST", &unknown_action);
    let too_large = wire
        .signed(
            "POST",
            "/api/states",
            &[("image-uri", &"x".repeat(300 << 10))],
        )
        .await;
    assert_eq!(too_large.status, 413);
    contract.conforms("/api/states", "POST", &too_large);
    let responses = &contract.doc["components"]["responses"];
    let no_route = wire.signed("GET", "/api/nothing-here", &[]).await;
    assert_eq!(no_route.status, 404);
    contract.matches(&responses["NotFound"], &no_route);
    let wrong_method = wire.signed("GET", &action("install"), &[]).await;
    assert_eq!(wrong_method.status, 405);
    contract.matches(&responses["MethodNotAllowed"], &wrong_method);
    let no_file = wire
        .capture(
            "GET",
            &wire.url("/store/nothing.js"),
            wire.http.get(wire.url("/store/nothing.js")),
        )
        .await;
    assert_eq!(no_file.status, 404);
    contract.conforms("/store/{file}", "GET", &no_file);

    // The unsigned side: health, metrics (the names the contract lists), the page.
    let health = wire
        .capture(
            "GET",
            &wire.url("/healthz"),
            wire.http.get(wire.url("/healthz")),
        )
        .await;
    let health = contract.conforms("/healthz", "GET", &health);
    assert_eq!(health["status"], "ok");
    let metrics = wire
        .capture(
            "GET",
            &wire.url("/metrics"),
            wire.http.get(wire.url("/metrics")),
        )
        .await;
    contract.conforms("/metrics", "GET", &metrics);
    let described = contract.doc["paths"]["/metrics"]["get"]["description"]
        .as_str()
        .unwrap();
    for name in described
        .split('`')
        .filter(|word| word.starts_with("image_store_proxy_"))
        .map(|word| word.split('{').next().unwrap())
    {
        assert!(
            metrics.body.contains(&format!("# TYPE {name} ")),
            "{name} is documented but not exposed:\n{}",
            metrics.body
        );
    }
    let redirect = wire
        .capture(
            "GET",
            &wire.url("/store"),
            wire.http.get(wire.url("/store")),
        )
        .await;
    assert_eq!(redirect.status, 308);
    contract.conforms("/store", "GET", &redirect);
}
