//! Talking to the node outside the load: creating the harness's accounts through the admin API
//! and reading the node's own signal-to-order histogram from `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::{json, Value};

/// `http://host:port` → a socket address and the Host header value.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    Ok((addr, host.to_string()))
}

/// One request on a fresh connection (`Connection: close`); (status, body).
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    Ok((status, body.to_string()))
}

/// Creates `n` accounts with limits that stay out of the way of a load test, and one key each
/// (with the feed role when `feed`, to send market data).
pub fn create_accounts(admin: SocketAddr, token: &str, n: usize, feed: bool) -> Result<Vec<String>, String> {
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let mut keys = Vec::new();
    for i in 0..n {
        let body = json!({
            "name": format!("bench-{i}"),
            "tier": "enterprise",
            "cash": "1000000000",
            "limits": {
                "requests_per_minute": 4_000_000_000u64,
                "max_orders_per_second": 4_000_000_000u64,
                "max_order_notional": "100000000",
                "max_position_notional": "100000000",
                "max_gross_exposure": "1000000000",
                "max_daily_loss": "0"
            }
        });
        let (status, text) = call(admin, "POST", "/admin/accounts", &headers, &body.to_string())?;
        if status != 201 {
            return Err(format!("creating an account: {status} {text}"));
        }
        let id =
            serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())?["id"].as_u64().ok_or("no account id")?;
        let key_body = if feed { r#"{"roles":["feed"]}"# } else { "{}" };
        let (status, text) = call(admin, "POST", &format!("/admin/accounts/{id}/keys"), &headers, key_body)?;
        if status != 201 {
            return Err(format!("creating a key: {status} {text}"));
        }
        let key = serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())?["key"]
            .as_str()
            .ok_or("no key")?
            .to_string();
        keys.push(key);
    }
    Ok(keys)
}

/// The node's signal-to-order summary from `/metrics`: quantiles in µs and the sample count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeLatency {
    /// (quantile, µs).
    pub quantiles: Vec<(String, f64)>,
    /// Largest seen, µs.
    pub max_us: f64,
    /// Samples since the node started.
    pub count: u64,
}

/// Parses the node's Prometheus text.
pub fn parse_node_latency(metrics: &str) -> NodeLatency {
    let mut out = NodeLatency::default();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = value.parse::<f64>() else { continue };
        if let Some(q) =
            name.strip_prefix("signalgate_signal_to_order_seconds{quantile=\"").and_then(|r| r.strip_suffix("\"}"))
        {
            out.quantiles.push((q.to_string(), v * 1e6));
        } else if name == "signalgate_signal_to_order_seconds_count" {
            out.count = v as u64;
        } else if name == "signalgate_signal_to_order_max_seconds" {
            out.max_us = v * 1e6;
        }
    }
    out
}

/// Reads the node's signal-to-order summary.
pub fn node_latency(addr: SocketAddr) -> Result<NodeLatency, String> {
    let (status, text) = call(addr, "GET", "/metrics", &[], "")?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    Ok(parse_node_latency(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_node_summary() {
        let text = "# HELP x\nsignalgate_signal_to_order_seconds{quantile=\"0.5\"} 0.000000711\nsignalgate_signal_to_order_seconds{quantile=\"0.99\"} 0.000006511\nsignalgate_signal_to_order_seconds_count 3350391\nsignalgate_signal_to_order_max_seconds 0.003971071\n";
        let n = parse_node_latency(text);
        assert_eq!(n.count, 3_350_391);
        assert_eq!(n.quantiles.len(), 2);
        assert!((n.quantiles[1].1 - 6.511).abs() < 1e-9);
        assert!((n.max_us - 3971.071).abs() < 1e-6);
    }

    #[test]
    fn urls_need_http() {
        assert!(parse_url("https://x").is_err());
        let (addr, host) = parse_url("http://127.0.0.1:8080/v1").unwrap();
        assert_eq!((addr.port(), host.as_str()), (8080, "127.0.0.1:8080"));
    }
}
