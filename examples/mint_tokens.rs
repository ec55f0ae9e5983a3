//! Makes an issuer for `benches/load.sh`'s token benchmark: an EC P-256 key
//! made here, the issuer file trusting it (its public key in a JWKS file
//! beside it, so the benchmark fetches nothing), and `count` ES256 tokens
//! for one subject, one per line, each with its own `jti` (so that none is
//! a repeat of another, for the verified-token cache).
//!
//! Usage: `mint_tokens <issuers dir> <subject> <count> <tokens file>`.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, subject, count, out] = args.as_slice() else {
        eprintln!("usage: mint_tokens <issuers dir> <subject> <count> <tokens file>");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("count");
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).expect("issuers dir");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "bench", "use": "sig",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
    }]});
    std::fs::write(dir.join("bench.jwks.json"), jwks.to_string()).expect("jwks");
    let issuer = "https://bench.cedard.test";
    std::fs::write(
        dir.join("bench.yaml"),
        format!("issuer: {issuer}\naudiences: [cedard]\njwks_file: bench.jwks.json\nalgorithms: [ES256]\n"),
    )
    .expect("issuer file");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("bench".into());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).expect("tokens file"));
    for i in 0..count {
        let claims = serde_json::json!({
            "iss": issuer, "aud": "cedard", "sub": subject,
            "iat": now, "exp": now + 86_400, "jti": format!("bench-{i}"),
        });
        let token = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
        writeln!(file, "{token}").expect("write");
    }
}
