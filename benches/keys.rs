//! What checking a caller key costs on every request: finding the key by
//! its id, hashing the presented secret and comparing it in constant time,
//! with 1 and with 10,000 live keys; and, for scale, the cost of an unknown
//! key (refused before hashing) and of the check's baseline, a bare SHA-256
//! of the secret. Run: `cargo bench --bench keys`.

use cedard::keys::{self, KeyRing, Scope};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sha2::{Digest, Sha256};

fn bench(c: &mut Criterion) {
    let one = keys::generate("svc", &[Scope::Decide], 0).expect("random");
    let ring_one = KeyRing::new(std::slice::from_ref(&one.record));
    let mut records = vec![one.record.clone()];
    for i in 0..9_999 {
        records.push(
            keys::generate(&format!("svc{i}"), &[Scope::Decide], 0)
                .expect("random")
                .record,
        );
    }
    let ring_many = KeyRing::new(&records);
    let secret = one.secret.clone();
    let tail = secret.rsplit('_').next().unwrap_or_default().to_owned();

    let mut group = c.benchmark_group("key check");
    group.bench_function("bare sha256 of the secret", |b| {
        b.iter(|| black_box(Sha256::digest(black_box(tail.as_bytes()))))
    });
    group.bench_function("valid key, 1 live key", |b| {
        b.iter(|| black_box(ring_one.verify(black_box(&secret)).is_ok()))
    });
    group.bench_function("valid key, 10000 live keys", |b| {
        b.iter(|| black_box(ring_many.verify(black_box(&secret)).is_ok()))
    });
    let unknown = format!("{}0000000000000000_{tail}", keys::PREFIX);
    group.bench_function("unknown key id", |b| {
        b.iter(|| black_box(ring_many.verify(black_box(&unknown)).is_err()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
