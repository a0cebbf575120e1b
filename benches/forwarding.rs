//! Forwarding-path benchmark of the SFU core: one publisher's SRTP video packets fanned out to
//! N subscribers (N = 1, 10, 100), decrypt + route + re-encrypt, no sockets.
//!
//! Throughput is reported in forwarded packets (input packets x subscribers) per second.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use huizhen::sfu::sim::{SimNet, SERVER_ADDR};
use huizhen::sfu::{LeaveReason, SfuOutput};
use str0m::media::MediaKind;
use str0m::net::Protocol;

const BATCH: usize = 200;

fn room_with_subscribers(n: usize) -> SimNet {
    let mut net = SimNet::new(42);
    net.add_client("bench", &[MediaKind::Video]);
    for _ in 0..n {
        net.add_client("bench", &[]);
    }
    net.run_for(Duration::from_secs(2));
    net
}

fn forwarding(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_video_1_to_n");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for n in [1usize, 10, 100] {
        let mut net = room_with_subscribers(n);
        let payload = vec![0x5au8; 1100];
        group.throughput(Throughput::Elements((BATCH * n) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for i in 0..BATCH {
                        net.send_rtp(0, MediaKind::Video, &payload, i % 10 == 0);
                    }
                    let datagrams = net.take_datagrams_to_server();
                    let now = net.now;
                    let start = Instant::now();
                    let mut sent = 0usize;
                    for (source, bytes) in &datagrams {
                        net.sfu
                            .handle_datagram(now, Protocol::Udp, *source, SERVER_ADDR, bytes);
                        while let Some(out) = net.sfu.poll_output() {
                            if let SfuOutput::Transmit(t) = out {
                                sent += std::hint::black_box(t.contents.len()).min(1);
                            }
                        }
                    }
                    total += start.elapsed();
                    assert!(
                        sent >= datagrams.len() * n / 2,
                        "forwarding stalled: {sent}"
                    );
                }
                total
            });
        });
    }
    group.finish();
}

/// A participant joining an empty room and leaving it: what the server spends on a join before
/// any signaling or media (its str0m session, DTLS certificate included). The soak's churn
/// (participants joining and leaving all the time) costs about this per visitor.
fn join_and_leave(c: &mut Criterion) {
    let mut group = c.benchmark_group("participant");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    let mut net = SimNet::new(7);
    group.bench_function("join_and_leave", |b| {
        b.iter(|| {
            let now = net.now;
            let id = net
                .sfu
                .join(now, "bench-join", "visitor", true, None)
                .expect("join");
            net.sfu.leave(now, id, LeaveReason::Left);
            while net.sfu.poll_output().is_some() {}
        });
    });
    group.finish();
}

criterion_group!(benches, forwarding, join_and_leave);
criterion_main!(benches);
