//! Which addresses the server may connect to on a user's say-so.
//!
//! Public unicast addresses are fine. Everything else — loopback, the private ranges, link-local,
//! unique-local, CGNAT, documentation and benchmarking ranges, multicast, broadcast, unspecified,
//! reserved, and the IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4) of
//! any of these — is refused unless a range of `outbound_allow_private` contains it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range, `10.0.0.0/8` or `fd00::/8`. Host bits are ignored (`127.0.0.1/8` is
/// `127.0.0.0/8`); a bare address is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an address range (e.g. 127.0.0.0/8 or fd00::/8)");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let network = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        let network = match network {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(
                u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0),
            )),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0),
            )),
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Where outbound requests may go.
#[derive(Clone, Debug, Default)]
pub struct OutboundPolicy {
    allow_private: Vec<Cidr>,
}

/// What the policy says of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A public address.
    Public,
    /// Not public, but inside a range of `outbound_allow_private`.
    Allowed,
    /// Not public and not allowed.
    Refused,
}

impl OutboundPolicy {
    /// Public addresses, and those inside `allow_private`.
    pub fn new(allow_private: Vec<Cidr>) -> Self {
        Self { allow_private }
    }

    /// Parses the ranges of the `outbound_allow_private` setting.
    pub fn from_ranges<S: AsRef<str>>(ranges: &[S]) -> Result<Self, String> {
        let allow = ranges
            .iter()
            .map(|r| r.as_ref().parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(allow))
    }

    pub fn allowed_ranges(&self) -> &[Cidr] {
        &self.allow_private
    }

    pub fn verdict(&self, ip: IpAddr) -> Verdict {
        if self.allow_private.iter().any(|c| c.contains(ip)) {
            Verdict::Allowed
        } else if is_public(ip) {
            Verdict::Public
        } else {
            Verdict::Refused
        }
    }
}

/// A globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const NOT_PUBLIC: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
        ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, broadcast
    ];
    !NOT_PUBLIC.iter().any(|(net, prefix)| in_v4(ip, *net, *prefix))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let within = |net: u128, prefix: u32| {
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        bits & mask == net & mask
    };
    let embedded_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    // Forms that carry an IPv4 address: judged by that address.
    if within(0xffff_0000_0000, 96) // ::ffff:0:0/96, mapped
        || within(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96)
    // 64:ff9b::/96, NAT64
    {
        return is_public_v4(embedded_v4);
    }
    if within(0x2002_0000_0000_0000_0000_0000_0000_0000, 16) {
        // 6to4: the IPv4 address is in bits 16..48.
        return is_public_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    const NOT_PUBLIC: &[(u128, u32)] = &[
        (0, 96),                      // ::/96: unspecified, loopback, IPv4-compatible
        (0x0064_ff9b_0001 << 80, 48), // 64:ff9b:1::/48, local-use NAT64
        (0x0100 << 112, 64),          // 100::/64, discard-only
        (0x2001 << 112, 23),          // 2001::/23, IETF protocol assignments (Teredo...)
        (0x2001_0db8 << 96, 32),      // 2001:db8::/32, documentation
        (0x3fff << 112, 20),          // 3fff::/20, documentation
        (0xfc00 << 112, 7),           // fc00::/7, unique-local
        (0xfe80 << 112, 10),          // fe80::/10, link-local
        (0xfec0 << 112, 10),          // fec0::/10, site-local (deprecated)
        (0xff00 << 112, 8),           // ff00::/8, multicast
    ];
    !NOT_PUBLIC.iter().any(|(net, prefix)| within(*net, *prefix))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_non_public_range_is_refused_by_default() {
        let p = OutboundPolicy::default();
        for s in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.10",
            "198.51.100.1",
            "203.0.113.5",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2001::1",
        ] {
            assert_eq!(p.verdict(ip(s)), Verdict::Refused, "{s}");
        }
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(p.verdict(ip(s)), Verdict::Public, "{s}");
        }
    }

    #[test]
    fn an_allowed_range_allows_exactly_its_addresses_and_their_mapped_forms() {
        let p = OutboundPolicy::from_ranges(&["127.0.0.1/8", "fd00::/8"]).unwrap();
        assert_eq!(p.verdict(ip("127.0.0.1")), Verdict::Allowed);
        assert_eq!(p.verdict(ip("127.9.9.9")), Verdict::Allowed);
        assert_eq!(p.verdict(ip("::ffff:127.0.0.1")), Verdict::Allowed);
        assert_eq!(p.verdict(ip("fd00::5")), Verdict::Allowed);
        assert_eq!(p.verdict(ip("::1")), Verdict::Refused);
        assert_eq!(p.verdict(ip("10.0.0.1")), Verdict::Refused);
        let one = OutboundPolicy::from_ranges(&["127.0.0.1"]).unwrap();
        assert_eq!(one.verdict(ip("127.0.0.1")), Verdict::Allowed);
        assert_eq!(one.verdict(ip("127.0.0.2")), Verdict::Refused);
    }

    #[test]
    fn ranges_that_are_not_ranges_are_refused() {
        for bad in ["localhost", "127.0.0.1/33", "::1/129", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!("10.1.2.3/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
    }
}
