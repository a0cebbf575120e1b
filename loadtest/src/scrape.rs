//! The server's own view of the time a packet spends inside it: huizhen exports the histogram
//! `huizhen_sfu_forward_latency_seconds` (receive to send of the forwarded copies). Two scrapes
//! of `/metrics` give the histogram of a window; quantiles are interpolated within buckets,
//! as Prometheus's `histogram_quantile` does. The same scrapes read the embedded TURN
//! server's counters ([`TurnSample`]), so a run with relayed participants can put the server's
//! CPU next to the packets it relayed.

use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The histogram's name.
pub const FORWARD_LATENCY: &str = "huizhen_sfu_forward_latency_seconds";

/// Packets relayed from TURN clients to the SFU.
pub const TURN_RELAYED_IN: &str = "huizhen_turn_relayed_in_packets_total";
/// Packets relayed from the SFU to TURN clients.
pub const TURN_RELAYED_OUT: &str = "huizhen_turn_relayed_out_packets_total";
/// Payload bytes relayed, both directions.
pub const TURN_RELAYED_BYTES: &str = "huizhen_turn_relayed_bytes_total";
/// Allocations held (a gauge per client transport).
pub const TURN_ALLOCATIONS: &str = "huizhen_turn_allocations";
/// Messages refused or dropped, by reason.
pub const TURN_REFUSED: &str = "huizhen_turn_refused_total";

/// The sum of every sample of the metric `name` in Prometheus text `body` (all label sets),
/// or `None` when it has none.
pub fn sum(body: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// The embedded TURN server's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TurnSample {
    /// Packets relayed from clients to the SFU.
    pub relayed_in: u64,
    /// Packets relayed from the SFU to clients.
    pub relayed_out: u64,
    /// Payload bytes relayed, both directions.
    pub relayed_bytes: u64,
    /// Allocations held, all transports.
    pub allocations: u64,
    /// Messages refused or dropped, all reasons.
    pub refused: u64,
}

impl TurnSample {
    /// The TURN counters in `body`; `None` when the server exports none (no TURN metrics).
    pub fn parse(body: &str) -> Option<TurnSample> {
        let get = |name| sum(body, name).unwrap_or(0.0) as u64;
        sum(body, TURN_RELAYED_IN)?;
        Some(TurnSample {
            relayed_in: get(TURN_RELAYED_IN),
            relayed_out: get(TURN_RELAYED_OUT),
            relayed_bytes: get(TURN_RELAYED_BYTES),
            allocations: get(TURN_ALLOCATIONS),
            refused: get(TURN_REFUSED),
        })
    }
}

/// Scraping failed.
#[derive(Debug, Error)]
pub enum ScrapeError {
    /// Only `http://host:port/path` URLs (loopback, no TLS) are scraped.
    #[error("metrics URL must look like http://127.0.0.1:8080/metrics: {0}")]
    Url(String),
    /// The request failed.
    #[error("scraping {url}: {reason}")]
    Http {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Cumulative bucket counts: (upper bound in seconds, count), ascending, `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, u64)>);

impl Buckets {
    /// The buckets of `name` in Prometheus text `body` (summed over label sets).
    pub fn parse(body: &str, name: &str) -> Buckets {
        let prefix = format!("{name}_bucket{{");
        let mut out: Vec<(f64, u64)> = Vec::new();
        for line in body.lines().filter(|l| l.starts_with(&prefix)) {
            let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            let Some(count) = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok()) else {
                continue;
            };
            match out.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, c)) => *c += count as u64,
                None => out.push((bound, count as u64)),
            }
        }
        out.retain(|(b, _)| !b.is_nan());
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(out)
    }

    /// `self - earlier`, bucket by bucket.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(b, c)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(eb, _)| eb == b)
                        .map_or(0, |(_, ec)| *ec);
                    (*b, c.saturating_sub(before))
                })
                .collect(),
        )
    }

    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.0.last().map_or(0, |(_, c)| *c)
    }

    /// The `q` quantile in seconds, interpolated linearly within its bucket; `None` when
    /// empty. A quantile in the `+Inf` bucket returns the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut lower_bound = 0.0;
        let mut lower_count = 0u64;
        for &(bound, count) in &self.0 {
            if count as f64 >= rank {
                if bound.is_infinite() {
                    return Some(lower_bound);
                }
                let in_bucket = (count - lower_count) as f64;
                let fraction = if in_bucket > 0.0 {
                    (rank - lower_count as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(lower_bound + (bound - lower_bound) * fraction);
            }
            lower_bound = bound;
            lower_count = count;
        }
        Some(lower_bound)
    }
}

/// GETs `url` (plain HTTP/1.0) and returns the body.
pub async fn fetch(url: &str) -> Result<String, ScrapeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ScrapeError::Url(url.into()))?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let http = |reason: String| ScrapeError::Http {
        url: url.into(),
        reason,
    };
    let work = async {
        let mut stream = TcpStream::connect(host)
            .await
            .map_err(|e| http(e.to_string()))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| http(e.to_string()))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| http(e.to_string()))?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| http("no HTTP header".into()))?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(http(head.lines().next().unwrap_or_default().to_string()));
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| http("timed out".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# HELP huizhen_sfu_forward_latency_seconds x\n\
        huizhen_sfu_forward_latency_seconds_bucket{le=\"0.0001\"} 50\n\
        huizhen_sfu_forward_latency_seconds_bucket{le=\"0.001\"} 90\n\
        huizhen_sfu_forward_latency_seconds_bucket{le=\"0.01\"} 100\n\
        huizhen_sfu_forward_latency_seconds_bucket{le=\"+Inf\"} 100\n\
        huizhen_sfu_forward_latency_seconds_sum 0.01\n\
        huizhen_sfu_forward_latency_seconds_count 100\n\
        other_bucket{le=\"1\"} 7\n";

    #[test]
    fn buckets_parse_and_quantiles_interpolate() {
        let b = Buckets::parse(BODY, FORWARD_LATENCY);
        assert_eq!(b.0.len(), 4);
        assert_eq!(b.count(), 100);
        assert!((b.quantile(0.5).unwrap() - 0.0001).abs() < 1e-12);
        // 0.95: halfway through the (0.001, 0.01] bucket.
        assert!((b.quantile(0.95).unwrap() - 0.0055).abs() < 1e-9);
        assert!((b.quantile(0.25).unwrap() - 0.00005).abs() < 1e-12);
    }

    #[test]
    fn windows_subtract_and_empty_windows_have_no_quantiles() {
        let b = Buckets::parse(BODY, FORWARD_LATENCY);
        assert_eq!(b.since(&b).quantile(0.5), None);
        let half = Buckets(b.0.iter().map(|(x, c)| (*x, c / 2)).collect());
        assert_eq!(b.since(&half).count(), 50);
        assert_eq!(Buckets::parse("", FORWARD_LATENCY).quantile(0.5), None);
    }

    #[test]
    fn turn_counters_are_summed_over_their_labels() {
        let body = "# TYPE huizhen_turn_allocations gauge\n\
            huizhen_turn_allocations{transport=\"tcp\"} 1\n\
            huizhen_turn_allocations{transport=\"udp\"} 4\n\
            huizhen_turn_allocations_created_total{transport=\"udp\"} 9\n\
            huizhen_turn_relayed_in_packets_total 1200\n\
            huizhen_turn_relayed_out_packets_total 3400\n\
            huizhen_turn_refused_total{reason=\"forbidden_peer\"} 2\n";
        let t = TurnSample::parse(body).unwrap();
        assert_eq!(
            t.allocations, 5,
            "the _created_total counter is another metric"
        );
        assert_eq!((t.relayed_in, t.relayed_out, t.refused), (1200, 3400, 2));
        assert_eq!(t.relayed_bytes, 0);
        assert_eq!(TurnSample::parse(BODY), None);
    }

    #[test]
    fn only_plain_http_urls_are_fetched() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(matches!(
            rt.block_on(fetch("https://x/metrics")),
            Err(ScrapeError::Url(_))
        ));
    }
}
