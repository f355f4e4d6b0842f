//! Shard URLs as `ledger query --url` and `ledger audit --url` take them.
//!
//! One URL may stand for every shard: a host name that resolves to several
//! addresses (a Kubernetes headless Service, a compose service scaled with
//! `--scale`) stands for one shard per address. Shards are then known by
//! the name each reports in its views, never by the URL or its position:
//! such a name lists its addresses in any order, and two URLs may reach the
//! same shard.

use std::net::{IpAddr, ToSocketAddrs};

use anyhow::Context as _;
use reqwest::Url;

/// A shard URL: plain `http://host:port`, optionally with a path prefix
/// (behind a proxy), to which the API paths are appended.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim())
        .map_err(|error| format!("{error} (expected e.g. http://localhost:8080)"))?;
    if url.scheme() != "http" {
        // The workspace builds reqwest without TLS: the shards' API is
        // served in-cluster over plain HTTP.
        return Err(format!(
            "the shards' API is plain http, not {}",
            url.scheme()
        ));
    }
    Ok(url)
}

/// One URL per shard the `urls` given stand for, each URL expanded in the
/// order the resolver lists its addresses. The same shard may come out
/// twice (two names for it); callers count shards by the names they report.
pub fn expand(urls: &[Url]) -> anyhow::Result<Vec<Url>> {
    let mut shards = Vec::new();
    for url in urls {
        shards.extend(expand_one(url)?);
    }
    Ok(shards)
}

/// A URL whose host is a name resolving to several addresses becomes one
/// URL per address; an IP literal, or a name with one address, stays as
/// given (so that its messages show what the user wrote).
fn expand_one(url: &Url) -> anyhow::Result<Vec<Url>> {
    // `domain` is `None` for an IP literal.
    let Some(name) = url.domain() else {
        return Ok(vec![url.clone()]);
    };
    let port = url
        .port_or_known_default()
        .context("an http URL has a port")?;
    let addresses = (name, port)
        .to_socket_addrs()
        .with_context(|| format!("{url}: resolving {name}"))?;
    Ok(at_addresses(url, addresses.map(|address| address.ip())))
}

/// `url` once per distinct address, in the order given, its host replaced
/// by the address (IPv6 in brackets); `url` itself for fewer than two, or
/// when every address is a loopback one: `localhost` names this machine
/// (127.0.0.1 and often ::1 too), where shards differ by port, not by
/// address, and a shard listening on IPv4 alone would refuse the other.
fn at_addresses(url: &Url, addresses: impl IntoIterator<Item = IpAddr>) -> Vec<Url> {
    let mut distinct: Vec<IpAddr> = Vec::new();
    for address in addresses {
        // The resolver may list an address twice (an /etc/hosts entry and
        // DNS): one address is one shard.
        if !distinct.contains(&address) {
            distinct.push(address);
        }
    }
    if distinct.len() < 2 || distinct.iter().all(IpAddr::is_loopback) {
        return vec![url.clone()];
    }
    distinct
        .into_iter()
        .map(|address| {
            let mut at = url.clone();
            at.set_ip_host(address)
                .expect("an http URL has a host, which an address can replace");
            at
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        parse_url(text).unwrap()
    }

    fn texts(urls: &[Url]) -> Vec<String> {
        urls.iter().map(Url::to_string).collect()
    }

    #[test]
    fn a_name_with_several_addresses_stands_for_one_shard_per_address() {
        let service = url("http://ledger-consumer:8080/prefix/");
        let addresses: [IpAddr; 4] = [
            "10.0.0.7".parse().unwrap(),
            "fd00::3".parse().unwrap(),
            "10.0.0.7".parse().unwrap(),
            "10.0.0.5".parse().unwrap(),
        ];
        assert_eq!(
            texts(&at_addresses(&service, addresses)),
            [
                "http://10.0.0.7:8080/prefix/",
                "http://[fd00::3]:8080/prefix/",
                "http://10.0.0.5:8080/prefix/",
            ]
        );
        let one: [IpAddr; 2] = ["10.0.0.7".parse().unwrap(), "10.0.0.7".parse().unwrap()];
        assert_eq!(at_addresses(&service, one), std::slice::from_ref(&service));
        assert_eq!(at_addresses(&service, []), [service]);
    }

    #[test]
    fn loopback_names_stay_one_shard() {
        let local = url("http://localhost:8080");
        let loopback: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(at_addresses(&local, loopback), std::slice::from_ref(&local));
        // Whatever this machine's resolver says of localhost.
        assert_eq!(expand(std::slice::from_ref(&local)).unwrap(), [local]);
    }

    #[test]
    fn ip_literals_stay_as_given_and_lists_concatenate() {
        let urls = [
            url("http://127.0.0.1:8081"),
            url("http://[::1]:8082/api"),
            url("http://10.1.2.3"),
        ];
        assert_eq!(
            texts(&expand(&urls).unwrap()),
            [
                "http://127.0.0.1:8081/",
                "http://[::1]:8082/api",
                "http://10.1.2.3/"
            ]
        );
    }

    #[test]
    fn an_unresolvable_name_is_an_error_naming_it() {
        // `.invalid` never resolves (RFC 2606).
        let error = expand(&[url("http://no-such-shard.invalid:8080")]).unwrap_err();
        assert!(
            format!("{error:#}").contains("resolving no-such-shard.invalid"),
            "{error:#}"
        );
    }

    #[test]
    fn only_plain_http_urls_are_shard_urls() {
        assert!(parse_url("https://h").unwrap_err().contains("plain http"));
        assert!(parse_url("not a url").is_err());
        assert_eq!(parse_url(" http://h:1 ").unwrap().as_str(), "http://h:1/");
    }
}
