//! Throughput benchmark of the detector: synthetic rules against synthetic HTTP-like TCP
//! flows. Run once with `cargo run --release -p qingluan-ids --example ids_bench`.

use std::time::{Duration, Instant, SystemTime};

use etherparse::PacketBuilder;
use qingluan_ids::{load, Config, Detector, Vars};

/// Rule counts to measure; the first is the baseline for the ratio.
const RULE_COUNTS: [usize; 3] = [0, 100, 10_000];
/// TCP flows in the traffic mix.
const FLOWS: u16 = 1_000;
/// Full-size data segments per flow after the request headers.
const SEGMENTS_PER_FLOW: u32 = 30;
/// Payload bytes per data segment.
const SEGMENT: usize = 1_460;

/// A small xorshift PRNG so runs are repeatable without extra dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len())] as char)
            .collect()
    }
}

fn rules(count: usize, rng: &mut Rng) -> String {
    const PORTS: [&str; 5] = ["any", "80", "$HTTP_PORTS", "1024:", "[80,443,8080]"];
    (0..count)
        .map(|i| {
            let len = 6 + rng.below(7);
            let content = rng.text(len);
            let port = PORTS[rng.below(PORTS.len())];
            let nocase = if i % 3 == 0 { " nocase;" } else { "" };
            format!(
                "alert tcp any any -> any {port} (msg:\"bench {i}\"; flow:established,to_server; \
                 content:\"{content}\";{nocase} sid:{};)\n",
                i + 1
            )
        })
        .collect()
}

fn frame(src: [u8; 4], sport: u16, seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
    let step = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, [10, 0, 1, 1], 64)
        .tcp(sport, 80, seq, 65_000);
    let step = if syn { step.syn() } else { step.ack(1) };
    let mut out = Vec::with_capacity(step.size(payload.len()));
    step.write(&mut out, payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// Client-side frames of `FLOWS` connections: SYN, an HTTP request, then full segments of
/// body text, interleaved round-robin across flows.
fn traffic(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut per_flow: Vec<Vec<Vec<u8>>> = Vec::new();
    for flow in 0..FLOWS {
        let src = [10, 0, (flow >> 8) as u8, flow as u8];
        let sport = 20_000 + flow;
        let mut seq = 1_000u32;
        let mut frames = vec![frame(src, sport, seq, true, b"")];
        seq += 1;
        let request = format!(
            "POST /api/v1/items/{} HTTP/1.1\r\nHost: svc-{}.internal\r\nUser-Agent: bench/1.0\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            rng.next() % 100_000,
            flow,
            SEGMENT * SEGMENTS_PER_FLOW as usize
        );
        frames.push(frame(src, sport, seq, false, request.as_bytes()));
        seq += request.len() as u32;
        for _ in 0..SEGMENTS_PER_FLOW {
            let body = rng.text(SEGMENT);
            frames.push(frame(src, sport, seq, false, body.as_bytes()));
            seq += SEGMENT as u32;
        }
        per_flow.push(frames);
    }
    let rounds = per_flow.iter().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|round| per_flow.iter().filter_map(move |f| f.get(round).cloned()))
        .collect()
}

fn main() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let frames = traffic(&mut rng);
    let bytes: usize = frames.iter().map(Vec::len).sum();
    println!(
        "traffic: {} frames, {:.1} MB, {FLOWS} TCP flows",
        frames.len(),
        bytes as f64 / 1e6
    );
    let mut baseline = None;
    for count in RULE_COUNTS {
        let text = rules(count, &mut rng);
        let set = match load(&[("bench.rules".to_string(), text)], &Vars::default()) {
            Ok(set) => set,
            Err(e) => {
                eprintln!("bench rules failed to load: {e}");
                return;
            }
        };
        let mut detector = Detector::new(set, Config::default());
        let start = Instant::now();
        let mut alerts = 0;
        for (i, frame) in frames.iter().enumerate() {
            let ts = SystemTime::UNIX_EPOCH + Duration::from_micros(i as u64);
            alerts += detector.inspect(frame, ts).len();
        }
        let secs = start.elapsed().as_secs_f64();
        let pps = frames.len() as f64 / secs;
        let mbps = bytes as f64 * 8.0 / secs / 1e6;
        let ratio = *baseline.get_or_insert(pps) / pps;
        println!(
            "{count:>6} rules: {pps:>10.0} packets/s {mbps:>8.0} Mbit/s  {ratio:.2}x the time of 0 rules  ({alerts} alerts)"
        );
    }
}
