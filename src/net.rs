//! Small network facts shared by every node: the printable endpoint of a URL, and the local
//! address a host uses to reach another.

use std::net::IpAddr;

/// AMQP port assumed when an endpoint names none.
const AMQP_DEFAULT_PORT: u16 = 5672;

/// `host:port` of a URL such as `amqp://user:pass@host:5672/vhost`, for log lines (never the
/// credentials).
pub fn endpoint_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
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
    use super::*;

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
    }

    #[tokio::test]
    async fn loopback_is_reached_from_loopback() {
        let ip = local_ip_toward("127.0.0.1:5672").await.unwrap();
        assert!(ip.is_loopback(), "{ip}");
    }
}
