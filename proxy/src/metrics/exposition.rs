//! The Prometheus text format (0.0.4) kube-proxy serves, from prometheus-client's OpenMetrics
//! text. Scrape configs and dashboards made for kube-proxy see the same lines:
//!
//! - a counter's family is named with its `_total` suffix in `# HELP` and `# TYPE`, as Go's
//!   client writes it (OpenMetrics names the family without it);
//! - numbers are formatted as Go's `strconv.FormatFloat(v, 'g', -1, 64)`: `le="1"`, not
//!   `le="1.0"`, so a query matching `le="1"` finds the bucket (and `1.7e+09` for a
//!   timestamp, as kube-proxy prints it);
//! - no `# EOF` line, and no period appended to the help text.

use std::collections::HashSet;

/// The content type of [`to_prometheus_text`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text (as prometheus-client encodes it) into the Prometheus text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let help = help.strip_suffix('.').unwrap_or(help);
            out.push_str("# HELP ");
            out.push_str(name);
            if counters.contains(name) {
                out.push_str("_total");
            }
            out.push(' ');
            out.push_str(help);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str("# TYPE ");
            out.push_str(name);
            if kind == "counter" {
                out.push_str("_total");
            }
            out.push(' ');
            out.push_str(kind);
        } else if line.starts_with('#') {
            out.push_str(line);
        } else {
            sample(line, &mut out);
        }
        out.push('\n');
    }
    out
}

/// One sample line with its `le` label and its value in Go's number format.
fn sample(line: &str, out: &mut String) {
    let (series, value) = match line.rsplit_once(' ') {
        Some(parts) => parts,
        None => {
            out.push_str(line);
            return;
        }
    };
    match series.find("le=\"") {
        Some(at) => {
            let start = at + 4;
            let end = series[start..]
                .find('"')
                .map_or(series.len(), |e| start + e);
            out.push_str(&series[..start]);
            out.push_str(&go_number(&series[start..end]));
            out.push_str(&series[end..]);
        }
        None => out.push_str(series),
    }
    out.push(' ');
    out.push_str(&go_number(value));
}

/// `text` as Go's `FormatFloat(v, 'g', -1, 64)` prints it; text that is not a number stays.
fn go_number(text: &str) -> String {
    let Ok(v) = text.parse::<f64>() else {
        return text.to_owned();
    };
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return "0".into();
    }
    // Go's shortest 'g' form switches to an exponent below 1e-4 and from 1e6; Rust's `{:e}`
    // gives the same shortest digits and the exact exponent.
    let scientific = format!("{v:e}");
    let Some((mantissa, exp)) = scientific.split_once('e') else {
        return scientific;
    };
    let Ok(exponent) = exp.parse::<i32>() else {
        return scientific;
    };
    if (-4..6).contains(&exponent) {
        return format!("{v}");
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_with_total_and_numbers_print_as_go_prints_them() {
        let openmetrics = "# HELP kubeproxy_proxy_healthz Cumulative proxy healthz HTTP status.\n\
            # TYPE kubeproxy_proxy_healthz counter\n\
            kubeproxy_proxy_healthz_total{code=\"200\"} 3\n\
            # HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds.\n\
            # TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n\
            kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv4\"} 0.25\n\
            kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1\n\
            kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\",ip_family=\"IPv4\"} 0\n\
            kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"1.0\",ip_family=\"IPv4\"} 1\n\
            kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\",ip_family=\"IPv4\"} 1\n\
            # HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time proxy rules were successfully synced.\n\
            # TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\n\
            kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1712345678.25\n\
            # EOF\n";
        let text = to_prometheus_text(openmetrics);
        assert_eq!(
            text,
            "# HELP kubeproxy_proxy_healthz_total Cumulative proxy healthz HTTP status\n\
            # TYPE kubeproxy_proxy_healthz_total counter\n\
            kubeproxy_proxy_healthz_total{code=\"200\"} 3\n\
            # HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds\n\
            # TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n\
            kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv4\"} 0.25\n\
            kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1\n\
            kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\",ip_family=\"IPv4\"} 0\n\
            kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"1\",ip_family=\"IPv4\"} 1\n\
            kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\",ip_family=\"IPv4\"} 1\n\
            # HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time proxy rules were successfully synced\n\
            # TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\n\
            kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1.71234567825e+09\n"
        );
    }

    #[test]
    fn go_number_format() {
        for (input, go) in [
            ("1.0", "1"),
            ("0.001", "0.001"),
            ("16.384", "16.384"),
            ("0.0", "0"),
            ("300.0", "300"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("123456.0", "123456"),
            ("1000000.0", "1e+06"),
            ("123456789.0", "1.23456789e+08"),
            ("1712345678.25", "1.71234567825e+09"),
            ("1e21", "1e+21"),
            ("-2.5", "-2.5"),
            ("+Inf", "+Inf"),
            ("NaN", "NaN"),
            ("x", "x"),
        ] {
            assert_eq!(go_number(input), go, "{input}");
        }
    }
}
