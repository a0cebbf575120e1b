//! Segment encryption benchmark: sealing and opening whole recording segments (1 MiB and 8 MiB,
//! 64 KiB chunks) with AES-256-GCM and SM4-GCM, one core, in memory.
//!
//! Throughput is plaintext bytes per second. `encrypt` seals a segment held in memory;
//! `encrypt_streaming` feeds it in 1200-byte media writes as the recorder does; `encrypt_write`
//! also writes the sealed bytes to a new spool file per segment (page cache, no fsync: the
//! recorder syncs once per closed segment, a cost of the disk rather than of the cipher).

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use huizhen::vault::{decrypt_segment, encrypt_segment, Cipher, DataKey, SegmentWriter};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

const SIZES: [(usize, &str); 2] = [(1 << 20, "1MiB"), (8 << 20, "8MiB")];
const CIPHERS: [Cipher; 2] = [Cipher::Aes256Gcm, Cipher::Sm4Gcm];

fn plaintext(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(1).fill_bytes(&mut v);
    v
}

fn segment_crypto(c: &mut Criterion) {
    let key = DataKey::from_bytes([0x42; 32]);
    let mut rng = StdRng::seed_from_u64(7);
    let spool = std::env::temp_dir().join(format!("hz-bench-spool-{}", std::process::id()));
    for op in ["encrypt", "encrypt_streaming", "encrypt_write", "decrypt"] {
        let mut group = c.benchmark_group(format!("segment_{op}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(4));
        for cipher in CIPHERS {
            for (len, label) in SIZES {
                let plain = plaintext(len);
                let sealed = encrypt_segment(&key, cipher, "rec-bench", 0, &plain, &mut rng);
                group.throughput(Throughput::Bytes(len as u64));
                let id = BenchmarkId::new(cipher.as_str(), label);
                match op {
                    "encrypt" => group.bench_function(id, |b| {
                        b.iter(|| {
                            encrypt_segment(
                                &key,
                                cipher,
                                "rec-bench",
                                0,
                                black_box(&plain),
                                &mut rng,
                            )
                        })
                    }),
                    "encrypt_streaming" => group.bench_function(id, |b| {
                        // As the recorder feeds it: 1200-byte media writes, output drained as
                        // it goes (as appended to a spool file).
                        b.iter(|| {
                            let mut w = SegmentWriter::new(
                                &key,
                                cipher,
                                64 * 1024,
                                "rec-bench",
                                0,
                                &mut rng,
                            )
                            .unwrap();
                            let mut sealed_len = 0;
                            for piece in black_box(&plain).chunks(1200) {
                                w.write(piece).unwrap();
                                sealed_len += w.take_output().len();
                            }
                            sealed_len + w.finish().unwrap().len()
                        })
                    }),
                    "encrypt_write" => group.bench_function(id, |b| {
                        // A new spool file per segment, as the recorder does; removing it is
                        // not timed (the uploader does that later).
                        b.iter_custom(|iters| {
                            let mut total = Duration::ZERO;
                            for _ in 0..iters {
                                let start = Instant::now();
                                let mut file = std::fs::File::create_new(&spool).unwrap();
                                let mut w = SegmentWriter::new(
                                    &key,
                                    cipher,
                                    64 * 1024,
                                    "rec-bench",
                                    0,
                                    &mut rng,
                                )
                                .unwrap();
                                for piece in black_box(&plain).chunks(1200) {
                                    w.write(piece).unwrap();
                                    if w.output().len() >= 256 * 1024 {
                                        file.write_all(w.output()).unwrap();
                                        w.clear_output();
                                    }
                                }
                                file.write_all(w.output()).unwrap();
                                file.write_all(&w.finish().unwrap()).unwrap();
                                drop(file);
                                total += start.elapsed();
                                std::fs::remove_file(&spool).unwrap();
                            }
                            total
                        })
                    }),
                    _ => group.bench_function(id, |b| {
                        b.iter(|| {
                            decrypt_segment(&key, "rec-bench", 0, black_box(&sealed)).unwrap()
                        })
                    }),
                };
            }
        }
        group.finish();
    }
    let _ = std::fs::remove_file(&spool);
}

criterion_group!(benches, segment_crypto);
criterion_main!(benches);
