//! Small network facts shared by every node: the printable endpoint of a URL, the local
//! address a host uses to reach another, and where an HTTP request carries the operator token.

use std::net::IpAddr;

/// AMQP port assumed when an endpoint names none.
const AMQP_DEFAULT_PORT: u16 = 5672;

/// The cookie that carries the operator token (set by the dashboard's login form; accepted by
/// every replica's API too).
pub const OPERATOR_COOKIE: &str = "ts_operator";

/// The operator token an HTTP request presents: `Authorization: Bearer <token>` if that header
/// is there (then cookies are not looked at), else the cookie [`OPERATOR_COOKIE`]. Trimmed.
pub fn presented_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    use axum::http::header;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(t) = bearer {
        return Some(t.trim());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(OPERATOR_COOKIE)?.strip_prefix('='))
        .map(str::trim)
        .next()
}

/// Answers every unknown path with a JSON 404 (`no such <what>: <uri>`) and every wrong method
/// with a JSON 405 (`method not allowed here (<methods>)`): a script talking to an HTTP API of
/// time-sync never has to parse HTML or an empty body.
pub fn json_fallbacks<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    what: &'static str,
    methods: &'static str,
) -> axum::Router<S> {
    use axum::http::{StatusCode, Uri};
    let error = |status: StatusCode, text: String| {
        (status, axum::Json(serde_json::json!({ "error": text })))
    };
    router
        .fallback(move |uri: Uri| async move {
            error(StatusCode::NOT_FOUND, format!("no such {what}: {uri}"))
        })
        .method_not_allowed_fallback(move || async move {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method not allowed here ({methods})"),
            )
        })
}

/// `host:port` of a URL such as `amqp://user:pass@host:5672/vhost`, for log lines (never the
/// credentials); of a list of URLs (a broker's nodes, comma-separated), the first's.
pub fn endpoint_of(url: &str) -> String {
    let url = url.split(',').next().unwrap_or(url).trim();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}

/// `HOST[:PORT]` split, with `default_port` when there is none: `ntp.example`, `10.0.0.1:11123`,
/// `[::1]:123` and a bare IPv6 address `::1` all work. `None` for a port that is not a number.
pub fn host_port(addr: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host.to_string(), p.parse().ok()?)),
            None if after.is_empty() => Some((host.to_string(), default_port)),
            None => None,
        };
    }
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some((addr.to_string(), default_port));
    }
    match addr.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((addr.to_string(), default_port)),
    }
}

/// The local address this host uses to reach `endpoint` (`host:port`; the AMQP port if none).
/// A UDP `connect` only consults the routing table; nothing is sent.
pub async fn local_ip_toward(endpoint: &str) -> std::io::Result<IpAddr> {
    let target = if endpoint
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        endpoint.to_string()
    } else {
        format!("{endpoint}:{AMQP_DEFAULT_PORT}")
    };
    let addr = tokio::net::lookup_host(&target)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{target} resolves to nothing")))?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    Ok(sock.local_addr()?.ip())
}

#[cfg(test)]
mod tests {

    #[test]
    fn host_port_takes_the_forms_people_write() {
        let hp = |a: &str| host_port(a, 123);
        assert_eq!(hp("ntp.example"), Some(("ntp.example".into(), 123)));
        assert_eq!(hp("127.0.0.1:11123"), Some(("127.0.0.1".into(), 11123)));
        assert_eq!(hp("[::1]:9"), Some(("::1".into(), 9)));
        assert_eq!(hp("[::1]"), Some(("::1".into(), 123)));
        assert_eq!(hp("fe80::1"), Some(("fe80::1".into(), 123)));
        assert_eq!(hp("host:port"), None);
        assert_eq!(hp("host:99999"), None);
        assert_eq!(hp("[::1]x"), None);
    }

    use super::*;

    #[test]
    fn the_token_comes_from_the_bearer_header_else_the_cookie() {
        use axum::http::{header, HeaderMap, HeaderValue};
        let h = |pairs: &[(header::HeaderName, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(k, HeaderValue::from_static(v));
            }
            m
        };
        let cookie = (header::COOKIE, "a=1; ts_operator= c0ffee ;b=2");
        let table: &[(HeaderMap, Option<&str>)] = &[
            (h(&[]), None),
            (h(&[(header::AUTHORIZATION, "Bearer  t0k ")]), Some("t0k")),
            (h(std::slice::from_ref(&cookie)), Some("c0ffee")),
            (
                h(&[(header::AUTHORIZATION, "Bearer x"), cookie.clone()]),
                Some("x"),
            ),
            (
                h(&[(header::AUTHORIZATION, "Basic x"), cookie.clone()]),
                Some("c0ffee"),
            ),
            (
                h(&[(header::COOKIE, "ts_operatorX=1; other=ts_operator=2")]),
                None,
            ),
        ];
        for (headers, want) in table {
            assert_eq!(presented_token(headers), *want, "{headers:?}");
        }
    }

    #[test]
    fn endpoint_hides_credentials() {
        assert_eq!(
            endpoint_of("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "127.0.0.1:5672"
        );
        assert_eq!(
            endpoint_of("redis://:p%40ss@10.0.0.2:6379/0"),
            "10.0.0.2:6379"
        );
        assert_eq!(endpoint_of("redis://localhost:6379"), "localhost:6379");
        assert_eq!(
            endpoint_of("amqp://u:p@10.0.0.3:5672/v, amqp://u:p@10.0.0.4:5672/v"),
            "10.0.0.3:5672",
            "a list: its first node"
        );
    }

    #[tokio::test]
    async fn loopback_is_reached_from_loopback() {
        let ip = local_ip_toward("127.0.0.1:5672").await.unwrap();
        assert!(ip.is_loopback(), "{ip}");
    }
}
