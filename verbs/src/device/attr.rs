//! Plain data the device reports: device and port attributes, MTUs and the GID table.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use rdma_sys as ffi;

use crate::error::{Error, Result};

/// Picks the default GID index from a table: RoCE v2 + IPv4-mapped, then RoCE v2, then the
/// first entry (index 0 when the table is empty).
pub fn choose_gid_index(table: &[GidEntry]) -> u32 {
    table
        .iter()
        .find(|e| e.gid_type == GidType::RoceV2 && e.gid.to_ipv4().is_some())
        .or_else(|| table.iter().find(|e| e.gid_type == GidType::RoceV2))
        .or_else(|| table.first())
        .map_or(0, |e| e.index)
}

/// Device capabilities (`ibv_device_attr`, the commonly needed part).
#[derive(Clone, Debug)]
#[allow(missing_docs)]
#[non_exhaustive]
pub struct DeviceAttr {
    pub fw_ver: String,
    pub node_guid: u64,
    pub vendor_id: u32,
    pub vendor_part_id: u32,
    pub max_qp: i32,
    pub max_qp_wr: i32,
    pub max_sge: i32,
    pub max_cq: i32,
    pub max_cqe: i32,
    pub max_mr: i32,
    pub max_mr_size: u64,
    pub max_pd: i32,
    pub max_qp_rd_atom: i32,
    pub max_qp_init_rd_atom: i32,
    pub max_srq: i32,
    pub max_srq_wr: i32,
    /// `enum ibv_atomic_cap` (0 = none, 1 = HCA, 2 = global).
    pub atomic_cap: u32,
    pub phys_port_cnt: u8,
}

/// Port attributes (`ibv_port_attr`, the commonly needed part).
#[derive(Clone, Debug)]
#[allow(missing_docs)]
#[non_exhaustive]
pub struct PortAttr {
    pub state: PortState,
    pub max_mtu: Mtu,
    pub active_mtu: Mtu,
    pub gid_tbl_len: i32,
    pub lid: u16,
    pub max_msg_sz: u32,
    pub link_layer: LinkLayer,
}

/// `enum ibv_port_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum PortState {
    Nop,
    Down,
    Init,
    Armed,
    Active,
    ActiveDefer,
    Unknown(u32),
}

impl PortState {
    pub(crate) fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::Nop,
            1 => Self::Down,
            2 => Self::Init,
            3 => Self::Armed,
            4 => Self::Active,
            5 => Self::ActiveDefer,
            o => Self::Unknown(o),
        }
    }
}

/// The port's link layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum LinkLayer {
    Unspecified,
    Infiniband,
    Ethernet,
}

/// Path MTU (`enum ibv_mtu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Mtu {
    Mtu256 = 1,
    Mtu512 = 2,
    Mtu1024 = 3,
    Mtu2048 = 4,
    Mtu4096 = 5,
}

impl Mtu {
    pub(crate) fn from_raw(v: u32) -> Self {
        match v {
            1 => Self::Mtu256,
            2 => Self::Mtu512,
            3 => Self::Mtu1024,
            5 => Self::Mtu4096,
            _ => Self::Mtu2048,
        }
    }

    /// Bytes.
    pub fn bytes(self) -> usize {
        128 << (self as usize)
    }
}

/// A 128-bit global identifier (network byte order, as on the wire).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// All zero (unpopulated table entry).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`).
    pub fn to_ipv4(&self) -> Option<Ipv4Addr> {
        Ipv6Addr::from(self.0).to_ipv4_mapped()
    }

    /// Parses the textual form sysfs and `ibv_devinfo -v` use
    /// (`fe80:0000:0000:0000:0000:0000:0000:0001` or any IPv6 notation).
    pub fn parse(s: &str) -> Result<Self> {
        s.trim()
            .parse::<Ipv6Addr>()
            .map(|a| Gid(a.octets()))
            .map_err(|e| Error::Malformed {
                what: "GID",
                detail: format!("{s:?}: {e}"),
            })
    }

    pub(crate) fn to_ffi(self) -> ffi::ibv_gid {
        ffi::ibv_gid { raw: self.0 }
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Ipv6Addr::from(self.0), f)
    }
}

/// GID type: how the GID is carried on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GidType {
    /// InfiniBand.
    Ib,
    /// RoCE v1 (Ethernet, ethertype 0x8915).
    RoceV1,
    /// RoCE v2 (UDP/IP, port 4791).
    RoceV2,
}

impl GidType {
    /// Parses sysfs `gid_attrs/types/<i>` (`IB/RoCE v1`, `RoCE v2`).
    pub fn parse_sysfs(s: &str) -> Option<Self> {
        match s.trim() {
            "RoCE v2" => Some(Self::RoceV2),
            "IB/RoCE v1" | "RoCE v1" => Some(Self::RoceV1),
            "IB" => Some(Self::Ib),
            _ => None,
        }
    }
}

/// One GID table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GidEntry {
    /// Table index (`sgid_index`).
    pub index: u32,
    /// The GID.
    pub gid: Gid,
    /// Its type.
    pub gid_type: GidType,
    /// The network device it belongs to (RoCE), e.g. `dummy0`.
    pub netdev: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u32, gid: &str, t: GidType) -> GidEntry {
        GidEntry {
            index,
            gid: Gid::parse(gid).unwrap(),
            gid_type: t,
            netdev: Some("dummy0".into()),
        }
    }

    #[test]
    fn gid_parse_and_ipv4() {
        let g = Gid::parse("0000:0000:0000:0000:0000:ffff:c000:0201").unwrap();
        assert_eq!(g.to_ipv4(), Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(g.to_string(), "::ffff:192.0.2.1");
        let l = Gid::parse("fe80:0000:0000:0000:5054:00ff:fe12:3456").unwrap();
        assert_eq!(l.to_ipv4(), None);
        assert!(!l.is_zero());
        assert!(Gid::parse("nonsense").is_err());
        assert!(Gid::default().is_zero());
    }

    #[test]
    fn gid_type_sysfs() {
        assert_eq!(GidType::parse_sysfs("RoCE v2\n"), Some(GidType::RoceV2));
        assert_eq!(GidType::parse_sysfs("IB/RoCE v1\n"), Some(GidType::RoceV1));
        assert_eq!(GidType::parse_sysfs("bogus"), None);
    }

    #[test]
    fn default_gid_prefers_roce_v2_ipv4() {
        let t = vec![
            entry(0, "fe80::1", GidType::RoceV1),
            entry(1, "fe80::1", GidType::RoceV2),
            entry(2, "::ffff:192.0.2.1", GidType::RoceV1),
            entry(3, "::ffff:192.0.2.1", GidType::RoceV2),
        ];
        assert_eq!(choose_gid_index(&t), 3);
        assert_eq!(choose_gid_index(&t[..3]), 1);
        assert_eq!(choose_gid_index(&t[..1]), 0);
        assert_eq!(choose_gid_index(&[]), 0);
    }

    #[test]
    fn mtu_bytes() {
        assert_eq!(Mtu::Mtu1024.bytes(), 1024);
        assert_eq!(Mtu::Mtu4096.bytes(), 4096);
        assert_eq!(Mtu::from_raw(99), Mtu::Mtu2048);
    }
}
