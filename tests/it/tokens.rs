//! Verified token identities over real HTTP: an identity provider on
//! loopback started by the test (OpenID discovery and a JWKS endpoint),
//! keys made in the test (RSA, EC P-256, Ed25519), tokens signed in the
//! test, and the real daemon deciding for each token's subject — or
//! refusing the token with a 401 and its reason, never a decision.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

use crate::accounts::{decide, sign_up, team};
use crate::support::{copy_pack, spawn_app_in, wait_until, Api, TestApp};

const DEADLINE: Duration = Duration::from_secs(20);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key made in the test, with its public JWK.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
    /// The public key as PEM (for the key-confusion attack).
    public_pem: String,
}

/// An RSA key (2048 bits), once per test process: RSA keys take a while to
/// make.
fn rsa_key(kid: &str) -> SigningKey {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    static KEYS: Mutex<Vec<rsa::RsaPrivateKey>> = Mutex::new(Vec::new());
    let index = kid.bytes().map(usize::from).sum::<usize>() % 2;
    let private = {
        let mut keys = KEYS.lock().expect("keys");
        while keys.len() < 2 {
            let mut rng = rsa::rand_core::OsRng;
            keys.push(rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"));
        }
        keys[index].clone()
    };
    let pem = private.to_pkcs1_pem(LineEnding::LF).expect("pem");
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");
    SigningKey {
        kid: kid.to_owned(),
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("encoding key"),
        jwk: json!({
            "kty": "RSA", "kid": kid, "use": "sig",
            "n": b64(&private.n().to_bytes_be()),
            "e": b64(&private.e().to_bytes_be()),
        }),
        public_pem,
    }
}

/// An EC P-256 key.
fn ec_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
    let raw = pair.public_key_raw();
    SigningKey {
        kid: kid.to_owned(),
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("encoding key"),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }),
        public_pem: pair.public_key_pem(),
    }
}

/// An Ed25519 key.
fn ed_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
    SigningKey {
        kid: kid.to_owned(),
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("encoding key"),
        jwk: json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
            "x": b64(pair.public_key_raw()),
        }),
        public_pem: pair.public_key_pem(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

/// An identity provider on loopback: OpenID discovery and a JWKS endpoint
/// that counts its fetches, can say `Cache-Control`, and can be stopped.
struct Idp {
    issuer: String,
    /// The `max-age` the key endpoint sends (300 s unless a test says).
    max_age: Arc<AtomicUsize>,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start(keys: &[&SigningKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let jwks = Arc::new(Mutex::new(
            json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let max_age = Arc::new(AtomicUsize::new(300));
        let app = {
            let (jwks, fetches, up, issuer, max_age) = (
                jwks.clone(),
                fetches.clone(),
                up.clone(),
                issuer.clone(),
                max_age.clone(),
            );
            let up2 = up.clone();
            axum::Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    axum::routing::get(move || {
                        let (issuer, up) = (issuer.clone(), up2.clone());
                        async move {
                            if !up.load(Ordering::SeqCst) {
                                return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                            }
                            Ok(axum::Json(json!({
                                "issuer": issuer,
                                "jwks_uri": format!("{issuer}/jwks"),
                            })))
                        }
                    }),
                )
                .route(
                    "/jwks",
                    axum::routing::get(move || {
                        let (jwks, fetches, up, max_age) =
                            (jwks.clone(), fetches.clone(), up.clone(), max_age.clone());
                        async move {
                            if !up.load(Ordering::SeqCst) {
                                return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                            }
                            fetches.fetch_add(1, Ordering::SeqCst);
                            let doc = jwks.lock().expect("jwks").clone();
                            let cache =
                                format!("public, max-age={}", max_age.load(Ordering::SeqCst));
                            Ok((
                                [(axum::http::header::CACHE_CONTROL, cache)],
                                axum::Json(doc),
                            ))
                        }
                    }),
                )
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            issuer,
            max_age,
            jwks,
            fetches,
            up,
            task,
        }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.jwks.lock().expect("jwks") =
            json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Stops answering: the server is gone (connections refused).
    fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.task.abort();
    }

    /// Claims for `sub`, valid for an hour, for the audience `cedard`.
    fn claims(&self, sub: &str) -> Value {
        json!({
            "iss": self.issuer,
            "aud": "cedard",
            "sub": sub,
            "iat": now(),
            "exp": now() + 3600,
            "jti": format!("jti-{sub}-{}", rand_suffix()),
            "email": format!("{sub}@example.com"),
            "email_verified": true,
            "name": sub.to_uppercase(),
        })
    }
}

fn rand_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst) as u64 * 1_000_003 + now()
}

/// `claims` signed with `key` (its algorithm and kid).
fn sign(key: &SigningKey, claims: &Value) -> String {
    sign_as(key, key.alg, claims)
}

fn sign_as(key: &SigningKey, alg: Algorithm, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.key).expect("sign")
}

/// The issuer file trusting `idp`, with `extra` YAML lines.
fn issuer_file(dir: &Path, idp: &Idp, extra: &str) -> PathBuf {
    let issuers = dir.join("issuers");
    std::fs::create_dir_all(&issuers).expect("issuers folder");
    std::fs::write(
        issuers.join("idp.yaml"),
        format!("issuer: {}\naudiences: [cedard]\n{extra}", idp.issuer),
    )
    .expect("issuer file");
    issuers
}

/// A daemon over the default pack trusting `idp`.
async fn daemon(idp: &Idp, extra: &str) -> TestApp {
    let dir = copy_pack();
    let issuers = issuer_file(dir.path(), idp, extra);
    let log = dir.path().join("decisions.log");
    spawn_app_in(dir, |c| {
        c.options.policy.issuers = Some(issuers);
        c.options.decision_log = Some(log);
    })
    .await
}

/// `/v1/is_authorized` with `principal_token`: the status and the body.
async fn decide_with(app: &TestApp, token: &str, action: &str, account: &str) -> (u16, Value) {
    app.post(
        "/v1/is_authorized",
        &json!({
            "principal_token": token,
            "action": {"type": "Action", "id": action},
            "resource": {"type": "Account", "id": account},
        }),
    )
    .await
}

/// A refusal: a 401 with `reason`, and no decision in the body.
#[track_caller]
fn refused(answer: &(u16, Value), reason: &str) {
    let (status, body) = answer;
    assert_eq!(*status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    assert_eq!(body["error"]["reason"], reason, "{body}");
    assert!(body.get("decision").is_none(), "{body}");
}

#[tokio::test]
async fn tokens_decide_for_their_subject_and_every_bad_token_is_a_401_with_its_reason() {
    let rsa = rsa_key("rsa-1");
    let ec = ec_key("ec-1");
    let ed = ed_key("ed-1");
    let idp = Idp::start(&[&rsa, &ec, &ed]).await;
    let app = daemon(&idp, "").await;
    team(&app, "alice").await;
    assert_eq!(sign_up(&app, "bob").await.0, 201);

    // Valid tokens, each algorithm: the decision is alice's, equal to the
    // answer naming her.
    let named = decide(&app, "alice", "updateSettings", "alice").await;
    assert_eq!(named["decision"], "allow");
    for (key, alg) in [
        (&rsa, Algorithm::RS256),
        (&rsa, Algorithm::PS256),
        (&ec, Algorithm::ES256),
        (&ed, Algorithm::EdDSA),
    ] {
        let token = sign_as(key, alg, &idp.claims("alice"));
        let (status, body) = decide_with(&app, &token, "updateSettings", "alice").await;
        assert_eq!(status, 200, "{alg:?}: {body}");
        assert_eq!(body["decision"], named["decision"], "{alg:?}: {body}");
        assert_eq!(body["reasons"], named["reasons"], "{alg:?}: {body}");
    }
    // bob is no member of alice's team: deny, as naming him says.
    let bob = sign(&rsa, &idp.claims("bob"));
    let (status, body) = decide_with(&app, &bob, "useAccount", "alice").await;
    assert_eq!((status, &body["decision"]), (200, &json!("deny")), "{body}");
    assert_eq!(
        decide(&app, "bob", "useAccount", "alice").await["decision"],
        "deny"
    );

    // Naming both is refused.
    let (status, body) = app
        .post(
            "/v1/is_authorized",
            &json!({
                "principal": {"type": "User", "id": "alice"},
                "principal_token": sign(&rsa, &idp.claims("alice")),
                "action": {"type": "Action", "id": "useAccount"},
                "resource": {"type": "Account", "id": "alice"},
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let mut claims = idp.claims("alice");
    claims["exp"] = json!(now() - 3600);
    refused(
        &decide_with(&app, &sign(&rsa, &claims), "useAccount", "alice").await,
        "token_expired",
    );
    let mut claims = idp.claims("alice");
    claims["nbf"] = json!(now() + 3600);
    refused(
        &decide_with(&app, &sign(&rsa, &claims), "useAccount", "alice").await,
        "token_not_yet_valid",
    );
    let mut claims = idp.claims("alice");
    claims["iss"] = json!("https://evil.example.com");
    refused(
        &decide_with(&app, &sign(&rsa, &claims), "useAccount", "alice").await,
        "token_issuer",
    );
    let mut claims = idp.claims("alice");
    claims["aud"] = json!("another-service");
    refused(
        &decide_with(&app, &sign(&rsa, &claims), "useAccount", "alice").await,
        "token_audience",
    );
    let stranger = rsa_key("not-published");
    refused(
        &decide_with(
            &app,
            &sign(&stranger, &idp.claims("alice")),
            "useAccount",
            "alice",
        )
        .await,
        "token_key_unknown",
    );
    // `alg: none`, unsigned.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(idp.claims("alice").to_string().as_bytes())
    );
    refused(
        &decide_with(&app, &none, "useAccount", "alice").await,
        "token_algorithm",
    );
    // HS256 "signed" with the RSA public key (key confusion).
    for secret in [
        rsa.public_pem.as_bytes(),
        rsa.jwk["n"].as_str().expect("n").as_bytes(),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(rsa.kid.clone());
        let forged = jsonwebtoken::encode(
            &header,
            &idp.claims("alice"),
            &EncodingKey::from_secret(secret),
        )
        .expect("sign");
        refused(
            &decide_with(&app, &forged, "updateSettings", "alice").await,
            "token_algorithm",
        );
    }
    // A tampered payload: bob's valid token made to say alice.
    let parts: Vec<&str> = bob.split('.').collect();
    let mut payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .expect("payload"),
    )
    .expect("json");
    payload["sub"] = json!("alice");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(payload.to_string().as_bytes()),
        parts[2]
    );
    refused(
        &decide_with(&app, &tampered, "updateSettings", "alice").await,
        "token_signature",
    );
    refused(
        &decide_with(&app, "not-a-token", "useAccount", "alice").await,
        "token_malformed",
    );

    // The batch takes one token for every question.
    let (status, body) = app
        .post(
            "/v1/is_authorized/batch",
            &json!({
                "principal_token": sign(&ec, &idp.claims("alice")),
                "requests": [
                    {"action": {"type": "Action", "id": "updateSettings"}, "resource": {"type": "Account", "id": "alice"}},
                    {"action": {"type": "Action", "id": "useAccount"}, "resource": {"type": "Account", "id": "bob"}},
                ],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["decision"], "allow", "{body}");
    assert_eq!(body["results"][1]["decision"], "deny", "{body}");

    // AuthZEN: the subject's token.
    let evaluation = |token: String| {
        json!({
            "subject": {"type": "User", "id": "", "properties": {"token": token}},
            "action": {"name": "updateSettings"},
            "resource": {"type": "Account", "id": "alice"},
        })
    };
    let (status, body) = app
        .post(
            "/access/v1/evaluation",
            &evaluation(sign(&ed, &idp.claims("alice"))),
        )
        .await;
    assert_eq!((status, &body["decision"]), (200, &json!(true)), "{body}");
    let (status, body) = app
        .post(
            "/access/v1/evaluation",
            &evaluation(sign(&ed, &idp.claims("bob"))),
        )
        .await;
    assert_eq!((status, &body["decision"]), (200, &json!(false)), "{body}");
    let mut claims = idp.claims("alice");
    claims["exp"] = json!(now() - 3600);
    refused(
        &app.post("/access/v1/evaluation", &evaluation(sign(&ed, &claims)))
            .await,
        "token_expired",
    );
    let (status, body) = app
        .post(
            "/access/v1/evaluations",
            &json!({
                "subject": {"type": "User", "id": "alice", "properties": {"token": sign(&rsa, &idp.claims("alice"))}},
                "evaluations": [
                    {"action": {"name": "updateSettings"}, "resource": {"type": "Account", "id": "alice"}},
                    {"action": {"name": "useAccount"}, "resource": {"type": "Account", "id": "bob"}},
                ],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["evaluations"][0]["decision"], true, "{body}");
    assert_eq!(body["evaluations"][1]["decision"], false, "{body}");
    // A subject id other than the token's is refused.
    let (status, body) = app
        .post(
            "/access/v1/evaluation",
            &json!({
                "subject": {"type": "User", "id": "bob", "properties": {"token": sign(&rsa, &idp.claims("alice"))}},
                "action": {"name": "useAccount"},
                "resource": {"type": "Account", "id": "alice"},
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // AuthZEN searches take the subject's token too: the accounts alice may
    // update the settings of, and what she may do on hers; bob's token
    // finds none of hers.
    let search = |path: &str, token: String| {
        let body = match path {
            "resource" => json!({
                "subject": {"type": "User", "id": "", "properties": {"token": token}},
                "action": {"name": "updateSettings"},
                "resource": {"type": "Account"},
            }),
            _ => json!({
                "subject": {"type": "User", "id": "", "properties": {"token": token}},
                "resource": {"type": "Account", "id": "alice"},
            }),
        };
        (format!("/access/v1/search/{path}"), body)
    };
    let (path, body) = search("resource", sign(&rsa, &idp.claims("alice")));
    let (status, found) = app.post(&path, &body).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        found["results"],
        json!([{"type": "Account", "id": "alice"}]),
        "{found}"
    );
    let (path, body) = search("action", sign(&rsa, &idp.claims("alice")));
    let (status, found) = app.post(&path, &body).await;
    assert_eq!(status, 200, "{found}");
    let names: Vec<&str> = found["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        names.contains(&"updateSettings") && names.contains(&"useAccount"),
        "{found}"
    );
    let (path, body) = search("action", sign(&rsa, &idp.claims("bob")));
    let (status, found) = app.post(&path, &body).await;
    assert_eq!((status, &found["results"]), (200, &json!([])), "{found}");
    let mut claims = idp.claims("alice");
    claims["aud"] = json!("elsewhere");
    let (path, body) = search("resource", sign(&rsa, &claims));
    refused(&app.post(&path, &body).await, "token_audience");

    // The decision log has the issuer, subject and jti of token decisions,
    // never a token.
    let log = app.dir.path().join("decisions.log");
    let marker = idp.claims("alice");
    let token = sign(&rsa, &marker);
    assert_eq!(
        decide_with(&app, &token, "useAccount", "alice").await.0,
        200
    );
    let jti = marker["jti"].as_str().expect("jti").to_owned();
    let line = wait_for_line(&log, |l| l["token"]["jti"] == jti.as_str()).await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(line["token"]["issuer"], idp.issuer.as_str(), "{line}");
    assert_eq!(line["token"]["subject"], "alice", "{line}");
    assert_eq!(line["principal"], r#"User::"alice""#, "{line}");
    let signature = token.rsplit('.').next().expect("signature");
    assert!(
        !text.contains(signature),
        "a token reached the decision log"
    );

    // Verifications are counted by outcome.
    let (_, _) = app.get("/healthz").await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("cedard_token_verifications_total"),
        "{metrics}"
    );
    assert!(metrics.contains("cedard_jwks_fetches_total"), "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_kid_refetches_at_most_once_per_interval_and_a_rotated_key_is_accepted() {
    let old = ec_key("old");
    let new = ec_key("new");
    let idp = Idp::start(&[&old]).await;
    let app = daemon(&idp, "unknown_kid_refetch_seconds: 2\n").await;
    team(&app, "alice").await;
    let (status, body) = decide_with(
        &app,
        &sign(&old, &idp.claims("alice")),
        "useAccount",
        "alice",
    )
    .await;
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("allow")),
        "{body}"
    );
    assert_eq!(idp.fetches(), 1);

    // The provider rotates in a new key. Once the interval since the last
    // fetch has passed, a token signed with it makes one refetch and is
    // accepted.
    idp.publish(&[&old, &new]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = decide_with(
        &app,
        &sign(&new, &idp.claims("alice")),
        "useAccount",
        "alice",
    )
    .await;
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("allow")),
        "{body}"
    );
    assert_eq!(idp.fetches(), 2);

    // A flood of unknown kids right after: refused, and at most one more
    // fetch per interval.
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..30 {
        let forged = ec_key(&format!("unknown-{i}"));
        let token = sign(&forged, &idp.claims("alice"));
        let (client, url) = (app.client.clone(), app.url("/v1/is_authorized"));
        calls.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&json!({
                    "principal_token": token,
                    "action": {"type": "Action", "id": "useAccount"},
                    "resource": {"type": "Account", "id": "alice"},
                }))
                .send()
                .await
                .expect("send");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }));
    }
    for call in calls {
        refused(&call.await.expect("task"), "token_key_unknown");
    }
    let elapsed = started.elapsed();
    let allowed = 2 + elapsed.as_secs() as usize / 2;
    assert!(
        idp.fetches() <= allowed,
        "{} fetches in {elapsed:?}",
        idp.fetches()
    );
    if elapsed < Duration::from_secs(2) {
        assert_eq!(idp.fetches(), 2, "a refetch within the interval");
    }
    app.stop().await;
}

#[tokio::test]
async fn with_the_key_server_down_cached_keys_serve_until_their_lifetime_then_401_never_allow() {
    let key = ed_key("k");
    let idp = Idp::start(&[&key]).await;
    let app = daemon(&idp, "keys_refresh_seconds: 1\nkeys_lifetime_seconds: 4\n").await;
    team(&app, "alice").await;
    let first = sign(&key, &idp.claims("alice"));
    let (status, body) = decide_with(&app, &first, "useAccount", "alice").await;
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("allow")),
        "{body}"
    );
    idp.stop();

    // Fresh tokens (none verified before) are still accepted with the keys
    // in hand, then refused once their lifetime is over; the token
    // accepted before is refused too (its verification is not kept past
    // its keys). Never an allow after a refusal.
    let mut accepted_while_down = 0;
    let mut refusals = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let token = sign(&key, &idp.claims("alice"));
        let answer = decide_with(&app, &token, "useAccount", "alice").await;
        match answer.0 {
            200 => {
                assert_eq!(refusals, 0, "allowed after a refusal: {}", answer.1);
                assert_eq!(answer.1["decision"], "allow");
                accepted_while_down += 1;
            }
            _ => {
                refused(&answer, "token_keys_unavailable");
                refusals += 1;
                if refusals >= 3 {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(accepted_while_down > 0, "the cached keys served nothing");
    assert!(refusals >= 3, "still accepted after 15 s");
    refused(
        &decide_with(&app, &first, "useAccount", "alice").await,
        "token_keys_unavailable",
    );
    app.stop().await;
}

#[tokio::test]
async fn a_mapped_claim_decides_and_a_claim_or_mapping_that_does_not_fit_is_refused() {
    let key = rsa_key("rsa-1");
    let idp = Idp::start(&[&key]).await;
    let dir = copy_pack();
    // The schema gives users an optional department; billing needs it to be
    // finance.
    let schema = dir.path().join("schema").join("teams.cedarschema");
    let text = std::fs::read_to_string(&schema).expect("schema");
    std::fs::write(
        &schema,
        text.replace(
            "  name?: String,\n};",
            "  name?: String,\n  department?: String,\n};",
        ),
    )
    .expect("schema");
    std::fs::write(
        dir.path().join("policies").join("finance.cedar"),
        "@id(\"billing-needs-finance\")\nforbid (principal, action == Action::\"manageBilling\", resource)\nunless { principal has department && principal.department == \"finance\" };\n",
    )
    .expect("policy");
    let issuers = issuer_file(dir.path(), &idp, "attributes:\n  department: dept\n");
    let app = spawn_app_in(dir, |c| c.options.policy.issuers = Some(issuers.clone())).await;
    team(&app, "alice").await;

    let with_dept = |dept: Value| {
        let mut c = idp.claims("alice");
        if !dept.is_null() {
            c["dept"] = dept;
        }
        sign(&key, &c)
    };
    let (status, body) =
        decide_with(&app, &with_dept(json!("finance")), "manageBilling", "alice").await;
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("allow")),
        "{body}"
    );
    let (status, body) = decide_with(
        &app,
        &with_dept(json!("engineering")),
        "manageBilling",
        "alice",
    )
    .await;
    assert_eq!((status, &body["decision"]), (200, &json!("deny")), "{body}");
    assert_eq!(
        body["reasons"][0]["policy_id"], "billing-needs-finance",
        "{body}"
    );
    let (status, body) = decide_with(&app, &with_dept(Value::Null), "manageBilling", "alice").await;
    assert_eq!((status, &body["decision"]), (200, &json!("deny")), "{body}");
    // Naming alice (no token, no claims): deny as well.
    assert_eq!(
        decide(&app, "alice", "manageBilling", "alice").await["decision"],
        "deny"
    );
    // A claim of the wrong type: refused naming it, never decided.
    let answer = decide_with(&app, &with_dept(json!(42)), "manageBilling", "alice").await;
    refused(&answer, "token_claims");
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`dept`")),
        "{}",
        answer.1
    );

    // `/v1/policies` lists the trusted issuer and its mapping.
    let listing = app.get("/v1/policies").await.1;
    let issuer = &listing["issuers"][0];
    assert_eq!(issuer["issuer"], idp.issuer.as_str(), "{listing}");
    assert_eq!(issuer["keys"], "discovery", "{listing}");
    assert_eq!(
        issuer["attributes"],
        json!({"department": "dept"}),
        "{listing}"
    );

    // A mapping to an attribute the schema does not declare: the reload is
    // refused with file and line, and the last good issuers keep working.
    let file = issuers.join("idp.yaml");
    std::fs::write(
        &file,
        format!(
            "issuer: {}\naudiences: [cedard]\nattributes:\n  department: dept\n  clearance: level\n",
            idp.issuer
        ),
    )
    .expect("edit");
    let listing = wait_for_refusal(&app).await;
    let err = &listing["last_reload"]["errors"][0];
    assert!(
        err["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("idp.yaml")),
        "{listing}"
    );
    assert_eq!(err["line"], 5, "{listing}");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("clearance")),
        "{listing}"
    );
    let (status, body) =
        decide_with(&app, &with_dept(json!("finance")), "manageBilling", "alice").await;
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("allow")),
        "{body}"
    );

    // Broken YAML: refused with its line too.
    std::fs::write(
        &file,
        format!("issuer: {}\naudiences: [cedard\n", idp.issuer),
    )
    .expect("edit");
    let listing = wait_until_message(&app, "idp.yaml").await;
    assert!(
        listing["last_reload"]["errors"][0]["line"]
            .as_u64()
            .is_some(),
        "{listing}"
    );
    // `alg: none` in the file is refused by name.
    std::fs::write(
        &file,
        format!(
            "issuer: {}\naudiences: [cedard]\nalgorithms: [RS256, none]\n",
            idp.issuer
        ),
    )
    .expect("edit");
    let listing = wait_until_message(&app, "never accepted").await;
    assert_eq!(listing["last_reload"]["errors"][0]["line"], 3, "{listing}");
    app.stop().await;
}

/// Waits until the last reload was refused, and returns `/v1/policies`.
async fn wait_for_refusal(app: &TestApp) -> Value {
    wait_until(DEADLINE, || async {
        app.get("/v1/policies").await.1["last_reload"]["ok"] == false
    })
    .await;
    app.get("/v1/policies").await.1
}

/// Waits until the last reload's first error mentions `text`.
async fn wait_until_message(app: &TestApp, text: &str) -> Value {
    wait_until(DEADLINE, || async {
        let listing = app.get("/v1/policies").await.1;
        let err = &listing["last_reload"]["errors"][0];
        listing["last_reload"]["ok"] == false
            && (err["message"].as_str().is_some_and(|m| m.contains(text))
                || err["file"].as_str().is_some_and(|f| f.contains(text)))
    })
    .await;
    app.get("/v1/policies").await.1
}

#[tokio::test]
async fn an_hmac_issuer_accepts_only_its_secret_and_its_algorithms() {
    let rsa = rsa_key("rsa-1");
    let idp = Idp::start(&[&rsa]).await;
    let dir = copy_pack();
    let secret = "0123456789abcdef0123456789abcdef-shared";
    let issuers = issuer_file(
        dir.path(),
        &idp,
        "algorithms: [HS256]\nhmac_secret_file: hs.secret\n",
    );
    std::fs::write(issuers.join("hs.secret"), secret).expect("secret");
    let app = spawn_app_in(dir, |c| c.options.policy.issuers = Some(issuers)).await;
    team(&app, "alice").await;
    let hs = |secret: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &idp.claims("alice"),
            &EncodingKey::from_secret(secret),
        )
        .expect("sign")
    };
    let (status, body) = decide_with(&app, &hs(secret.as_bytes()), "useAccount", "alice").await;
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("allow")),
        "{body}"
    );
    refused(
        &decide_with(
            &app,
            &hs(b"another secret of thirty-two bytes!!"),
            "useAccount",
            "alice",
        )
        .await,
        "token_signature",
    );
    // An RSA token from the same issuer: RS256 is not among its algorithms.
    refused(
        &decide_with(
            &app,
            &sign(&rsa, &idp.claims("alice")),
            "useAccount",
            "alice",
        )
        .await,
        "token_algorithm",
    );
    app.stop().await;
}

#[tokio::test]
async fn an_edit_of_a_jwks_file_reloads_the_keys() {
    // An issuer whose keys are a JWKS file in the issuers folder: the file
    // is read with the set, so replacing the key in it is a reload.
    let old = ec_key("file-old");
    let new = ec_key("file-new");
    let idp = Idp::start(&[]).await;
    let dir = copy_pack();
    let issuers = issuer_file(dir.path(), &idp, "jwks_file: keys.json\n");
    let jwks = |key: &SigningKey| json!({"keys": [key.jwk.clone()]}).to_string();
    std::fs::write(issuers.join("keys.json"), jwks(&old)).expect("jwks");
    let app = spawn_app_in(dir, |c| c.options.policy.issuers = Some(issuers.clone())).await;
    team(&app, "alice").await;
    let (status, body) = decide_with(
        &app,
        &sign(&old, &idp.claims("alice")),
        "useAccount",
        "alice",
    )
    .await;
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("allow")),
        "{body}"
    );
    std::fs::write(issuers.join("keys.json"), jwks(&new)).expect("jwks");
    wait_until(DEADLINE, || async {
        decide_with(
            &app,
            &sign(&new, &idp.claims("alice")),
            "useAccount",
            "alice",
        )
        .await
        .0 == 200
    })
    .await;
    refused(
        &decide_with(
            &app,
            &sign(&old, &idp.claims("alice")),
            "useAccount",
            "alice",
        )
        .await,
        "token_key_unknown",
    );
    assert_eq!(idp.fetches(), 0, "a JWKS file is never fetched");
    // A JWKS file named outside the folder's `*.json` files is refused at
    // its line.
    std::fs::write(
        issuers.join("idp.yaml"),
        format!(
            "issuer: {}\naudiences: [cedard]\njwks_file: ../keys.txt\n",
            idp.issuer
        ),
    )
    .expect("edit");
    let listing = wait_until_message(&app, "jwks_file").await;
    assert_eq!(listing["last_reload"]["errors"][0]["line"], 3, "{listing}");
    app.stop().await;
}

/// `method path` with the caller key `key` (if any) as the bearer, or the
/// user's `token` as the bearer when there is no key, or both (the token in
/// `X-Actor-Token`).
async fn as_user(
    app: &TestApp,
    key: Option<&str>,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path));
    match (key, token) {
        (Some(key), Some(token)) => req = req.bearer_auth(key).header("x-actor-token", token),
        (Some(key), None) => req = req.bearer_auth(key),
        (None, Some(token)) => req = req.bearer_auth(token),
        (None, None) => {}
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_seed_flow_driven_by_user_tokens_with_x_actor_turned_off() {
    use cedard::keys::Scope;
    let key = rsa_key("rsa-1");
    let idp = Idp::start(&[&key]).await;
    let dir = copy_pack();
    let issuers = issuer_file(dir.path(), &idp, "");
    // A backend key (manage) and a gateway key (decide), stored before the
    // daemon opens the file.
    let data = dir.path().join("data").join("cedard.redb");
    std::fs::create_dir_all(data.parent().expect("parent")).expect("data folder");
    let mut keys = HashMap::new();
    {
        let store = cedard::store::Store::open(&data).expect("store");
        for (name, scope) in [("backend", Scope::Manage), ("gateway", Scope::Decide)] {
            let k = cedard::keys::generate(name, &[scope], 1_700_000_000).expect("key");
            store.write(|w| w.create_key(&k.record)).expect("store key");
            keys.insert(name, k.secret.clone());
        }
    }
    let log = dir.path().join("decisions.log");
    let app = spawn_app_in(dir, |c| {
        c.options.policy.issuers = Some(issuers);
        c.options.actor = cedard::config::ActorMode::TokenOnly;
        c.options.decision_log = Some(log.clone());
    })
    .await;
    let backend = keys["backend"].as_str();
    let gateway = keys["gateway"].as_str();
    let alice_claims = idp.claims("alice");
    let alice = sign(&key, &alice_claims);
    let bob = sign(&key, &idp.claims("bob"));

    // X-Actor is off: refused even from the manage key.
    let answer = Api::at(&app.client, &app.url(""))
        .with_key(backend)
        .call(Method::GET, "/v1/accounts/alice", Some("alice"), None)
        .await;
    assert_eq!(answer.status, 401, "{:?}", answer.body);
    assert!(answer.body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("X-Actor-Token")));

    // Sign-up from the token alone: the id, email and name are its claims.
    let (status, body) = as_user(&app, None, Some(&alice), Method::POST, "/v1/users", None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["id"], "alice", "{body}");
    assert_eq!(body["user"]["email"], "alice@example.com", "{body}");
    assert_eq!(body["user"]["email_verified"], true, "{body}");
    assert_eq!(body["user"]["name"], "ALICE", "{body}");
    let (status, body) = as_user(
        &app,
        None,
        Some(&bob),
        Method::POST,
        "/v1/users",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // A body beside the token is refused: the token says who.
    let carol = sign(&key, &idp.claims("carol"));
    let (status, body) = as_user(
        &app,
        None,
        Some(&carol),
        Method::POST,
        "/v1/users",
        Some(json!({"id": "mallory", "email": "m@example.com"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // Convert: the backend's key with alice's token as the actor.
    let (status, body) = as_user(
        &app,
        Some(backend),
        Some(&alice),
        Method::POST,
        "/v1/accounts/alice/convert",
        Some(json!({"name": "Acme"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // bob's token alone is no caller key on a backend route.
    let (status, body) = as_user(
        &app,
        None,
        Some(&bob),
        Method::POST,
        "/v1/accounts/bob/convert",
        Some(json!({"name": "Bob Co"})),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // Invite bob as a dev, as alice.
    let (status, body) = as_user(
        &app,
        Some(backend),
        Some(&alice),
        Method::POST,
        "/v1/accounts/alice/invites",
        Some(json!({"role": "dev"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let invite = body["token"].as_str().expect("invite token").to_owned();
    // bob's token as actor cannot invite (no member).
    let (status, body) = as_user(
        &app,
        Some(backend),
        Some(&bob),
        Method::POST,
        "/v1/accounts/alice/invites",
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // bob accepts with his own token alone.
    let (status, body) = as_user(
        &app,
        None,
        Some(&bob),
        Method::POST,
        "/v1/invites/accept",
        Some(json!({"token": invite})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "dev", "{body}");
    // bob lists his memberships with his token.
    let (status, body) = as_user(&app, None, Some(&bob), Method::GET, "/v1/users/bob", None).await;
    assert_eq!(status, 200, "{body}");
    let memberships: Vec<(String, String)> = body["memberships"]
        .as_array()
        .expect("memberships")
        .iter()
        .map(|m| {
            (
                m["account"].as_str().unwrap_or_default().to_owned(),
                m["role"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        memberships.contains(&("alice".into(), "dev".into())),
        "{body}"
    );
    // ... and not alice's.
    let (status, body) =
        as_user(&app, None, Some(&bob), Method::GET, "/v1/users/alice", None).await;
    assert_eq!(status, 403, "{body}");

    // Decisions from the gateway with bob's token: a dev may create pods.
    let decide = |token: String| {
        json!({
            "principal_token": token,
            "action": {"type": "Action", "id": "createPod"},
            "resource": {"type": "Account", "id": "alice"},
        })
    };
    let gate = Api::at(&app.client, &app.url("")).with_key(gateway);
    let answer = gate
        .call(
            Method::POST,
            "/v1/is_authorized",
            None,
            Some(decide(bob.clone())),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["decision"], "allow", "{:?}", answer.body);

    // alice makes bob basic: his next decision is a deny.
    let (status, body) = as_user(
        &app,
        Some(backend),
        Some(&alice),
        Method::PUT,
        "/v1/accounts/alice/members/bob",
        Some(json!({"role": "basic"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer = gate
        .call(
            Method::POST,
            "/v1/is_authorized",
            None,
            Some(decide(bob.clone())),
        )
        .await;
    assert_eq!(answer.body["decision"], "deny", "{:?}", answer.body);
    // An expired user token on a management route: 401 with its reason.
    let mut claims = idp.claims("alice");
    claims["exp"] = json!(now() - 3600);
    let (status, body) = as_user(
        &app,
        Some(backend),
        Some(&sign(&key, &claims)),
        Method::GET,
        "/v1/accounts/alice",
        None,
    )
    .await;
    refused(&(status, body), "token_expired");

    // The log names the token behind each write's actor, never the token.
    let jti = alice_claims["jti"].as_str().expect("jti").to_owned();
    let convert = wait_for_line(&log, |l| l["operation"] == "convertToTeam").await;
    assert!(
        convert["actor"]
            .as_str()
            .is_some_and(|a| a.contains("alice")),
        "{convert}"
    );
    assert_eq!(convert["actor_token"]["jti"], jti.as_str(), "{convert}");
    assert_eq!(
        convert["actor_token"]["issuer"],
        idp.issuer.as_str(),
        "{convert}"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    let signature = alice.rsplit('.').next().expect("signature");
    assert!(!text.contains(signature), "a token reached the log");
    app.stop().await;
}

/// Waits for a line of the log at `path` that `wanted` accepts.
async fn wait_for_line(path: &Path, wanted: impl Fn(&Value) -> bool) -> Value {
    let find = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| wanted(l))
    };
    wait_until(DEADLINE, || async { find().is_some() }).await;
    find().expect("the line")
}

#[tokio::test]
async fn the_verified_token_cache_never_changes_an_answer() {
    // Two daemons trusting one provider, one remembering verified tokens and
    // one verifying every token afresh (`--token-cache-bytes 0`), asked the
    // same questions in the same order: the same answers, through repeats,
    // a token expiring between two asks, a key rotated out, and a role
    // change.
    let first = ec_key("first");
    let second = ec_key("second");
    let idp = Idp::start(&[&first]).await;
    // The key endpoint says its keys may be kept one second.
    idp.max_age.store(1, Ordering::SeqCst);
    let extra = "leeway_seconds: 0\nunknown_kid_refetch_seconds: 1\nkeys_refresh_seconds: 1\n";
    let cached = daemon(&idp, extra).await;
    let dir = copy_pack();
    let issuers = issuer_file(dir.path(), &idp, extra);
    let fresh = spawn_app_in(dir, |c| {
        c.options.policy.issuers = Some(issuers);
        c.options.token_cache_bytes = 0;
    })
    .await;
    for app in [&cached, &fresh] {
        team(app, "alice").await;
        assert_eq!(sign_up(app, "bob").await.0, 201);
    }
    let alice = sign(&first, &idp.claims("alice"));
    let bob = sign(&first, &idp.claims("bob"));
    let mut short = idp.claims("alice");
    short["exp"] = json!(now() + 2);
    let short = sign(&first, &short);
    let ask = |token: &str, action: &'static str| {
        let token = token.to_owned();
        let (cached, fresh) = (&cached, &fresh);
        async move {
            let a = decide_with(cached, &token, action, "alice").await;
            let b = decide_with(fresh, &token, action, "alice").await;
            let shape = |(status, body): &(u16, Value)| {
                (
                    *status,
                    body["decision"].clone(),
                    body["error"]["reason"].clone(),
                )
            };
            assert_eq!(shape(&a), shape(&b), "cached {a:?} fresh {b:?}");
            shape(&a)
        }
    };
    for _ in 0..3 {
        assert_eq!(ask(&alice, "updateSettings").await.1, "allow");
        assert_eq!(ask(&bob, "useAccount").await.1, "deny");
        assert_eq!(ask(&short, "useAccount").await.1, "allow");
    }
    // The short token expires: both refuse it, though one remembered it.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(ask(&short, "useAccount").await.0, 401);
    // bob joins alice's team: both answers change at once.
    for app in [&cached, &fresh] {
        let api = Api::at(&app.client, &app.url(""));
        let a = api
            .call(
                Method::POST,
                "/v1/accounts/alice/invites",
                Some("alice"),
                Some(json!({"role": "basic"})),
            )
            .await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        let token = a.body["token"].as_str().expect("invite token").to_owned();
        let a = api
            .call(
                Method::POST,
                "/v1/invites/accept",
                Some("bob"),
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    assert_eq!(ask(&bob, "useAccount").await.1, "allow");
    // The provider rotates the first key out. Once each daemon has
    // refreshed its keys (a token never seen before, signed with the old
    // key, is refused), the token the first daemon remembers is refused by
    // both.
    idp.publish(&[&second]);
    for app in [&cached, &fresh] {
        wait_until(DEADLINE, || async {
            decide_with(
                app,
                &sign(&first, &idp.claims("alice")),
                "useAccount",
                "alice",
            )
            .await
            .0 == 401
        })
        .await;
    }
    assert_eq!(ask(&alice, "updateSettings").await.2, "token_key_unknown");
    assert_eq!(
        ask(&sign(&second, &idp.claims("alice")), "useAccount")
            .await
            .1,
        "allow"
    );
    cached.stop().await;
    fresh.stop().await;
}
