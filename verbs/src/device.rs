//! Devices, device contexts, port attributes and the GID table.

use std::ffi::CStr;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::raw::c_int;
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rdma_sys as ffi;

use crate::error::{Error, Result};

/// One entry of the list `ibv_get_device_list` reports (name and GUID are copied out; the
/// list itself is freed immediately).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Kernel device name, e.g. `rxe0` or `mlx5_0`.
    pub name: String,
    /// Node GUID (host order).
    pub guid: u64,
}

/// Owns the array returned by `ibv_get_device_list`.
struct DeviceList {
    list: NonNull<*mut ffi::ibv_device>,
    len: usize,
}

impl DeviceList {
    fn get() -> Result<Self> {
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid out-pointer; the returned array is owned by us until
        // `ibv_free_device_list` (in Drop).
        let list = unsafe { ffi::ibv_get_device_list(&mut n) };
        let list = NonNull::new(list)
            .ok_or_else(|| Error::last_os("ibv_get_device_list", "listing RDMA devices"))?;
        Ok(Self {
            list,
            len: usize::try_from(n).unwrap_or(0),
        })
    }

    fn iter(&self) -> impl Iterator<Item = *mut ffi::ibv_device> + '_ {
        // SAFETY: the array has `len` valid entries while `self` lives.
        (0..self.len).map(move |i| unsafe { *self.list.as_ptr().add(i) })
    }

    fn name(dev: *mut ffi::ibv_device) -> String {
        // SAFETY: `dev` comes from a live device list; the name is a NUL-terminated string
        // inside the device struct.
        let p = unsafe { ffi::ibv_get_device_name(dev) };
        if p.is_null() {
            return String::new();
        }
        // SAFETY: non-null, NUL-terminated, valid while the list lives; copied out at once.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from `ibv_get_device_list` and is freed exactly once; opened
        // contexts stay valid after the list is freed (documented by libibverbs).
        unsafe { ffi::ibv_free_device_list(self.list.as_ptr()) }
    }
}

/// Lists the RDMA devices of this host.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let list = DeviceList::get()?;
    Ok(list
        .iter()
        .map(|d| DeviceInfo {
            name: DeviceList::name(d),
            // SAFETY: `d` is a valid device of the live list.
            guid: u64::from_be(unsafe { ffi::ibv_get_device_guid(d) }),
        })
        .collect())
}

pub(crate) struct ContextInner {
    pub(crate) ctx: NonNull<ffi::ibv_context>,
    pub(crate) name: String,
    pub(crate) events_taken: AtomicBool,
    /// Default GID index per port, computed once (a GID-table scan is ~3 syscalls per entry).
    default_gid: Mutex<Vec<(u8, u32)>>,
}

ibverbs_thread_safe!(ContextInner);

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: every child object holds an `Arc<ContextInner>`, so all of them are destroyed
        // by now; the context is closed exactly once.
        let rc = unsafe { ffi::ibv_close_device(self.ctx.as_ptr()) };
        if rc != 0 {
            tracing::warn!(device = %self.name, rc, "ibv_close_device failed");
        }
    }
}

/// An open device (`ibv_context`). Cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<ContextInner>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Context {
    /// Opens the device called `name`, or the first device when `name` is `None`.
    pub fn open(name: Option<&str>) -> Result<Self> {
        let list = DeviceList::get()?;
        let dev = list
            .iter()
            .find(|&d| match name {
                None => true,
                Some(n) => DeviceList::name(d) == n,
            })
            .ok_or_else(|| {
                Error::NoDevice(match name {
                    Some(n) => format!("named {n:?}"),
                    None => "present (is rdma_rxe loaded and a link added?)".into(),
                })
            })?;
        let dev_name = DeviceList::name(dev);
        // SAFETY: `dev` belongs to the live list; the returned context is owned by us.
        let ctx = unsafe { ffi::ibv_open_device(dev) };
        let ctx = NonNull::new(ctx)
            .ok_or_else(|| Error::last_os("ibv_open_device", format!("opening {dev_name}")))?;
        Ok(Self {
            inner: Arc::new(ContextInner {
                ctx,
                name: dev_name,
                events_taken: AtomicBool::new(false),
                default_gid: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Opens the device named by `TOKIO_RDMA_DEVICE` if set, else the first device.
    pub fn open_default() -> Result<Self> {
        match std::env::var("TOKIO_RDMA_DEVICE") {
            Ok(n) if !n.is_empty() => Self::open(Some(&n)),
            _ => Self::open(None),
        }
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_context {
        self.inner.ctx.as_ptr()
    }

    /// `ibv_query_device`.
    pub fn query_device(&self) -> Result<DeviceAttr> {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut a: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open; `a` is a valid out-pointer.
        let rc = unsafe { ffi::ibv_query_device(self.as_ptr(), &mut a) };
        if rc != 0 {
            return Err(Error::from_ret(
                "ibv_query_device",
                rc,
                self.inner.name.clone(),
            ));
        }
        // SAFETY: `fw_ver` is a NUL-terminated char array filled by the provider.
        let fw = unsafe { CStr::from_ptr(a.fw_ver.as_ptr()) };
        Ok(DeviceAttr {
            fw_ver: fw.to_string_lossy().into_owned(),
            node_guid: u64::from_be(a.node_guid),
            vendor_id: a.vendor_id,
            vendor_part_id: a.vendor_part_id,
            max_qp: a.max_qp,
            max_qp_wr: a.max_qp_wr,
            max_sge: a.max_sge,
            max_cq: a.max_cq,
            max_cqe: a.max_cqe,
            max_mr: a.max_mr,
            max_mr_size: a.max_mr_size,
            max_pd: a.max_pd,
            max_qp_rd_atom: a.max_qp_rd_atom,
            max_qp_init_rd_atom: a.max_qp_init_rd_atom,
            max_srq: a.max_srq,
            max_srq_wr: a.max_srq_wr,
            atomic_cap: a.atomic_cap,
            phys_port_cnt: a.phys_port_cnt,
        })
    }

    /// `ibv_query_port`.
    pub fn query_port(&self, port: u8) -> Result<PortAttr> {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut a: ffi::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open; `a` is a valid out-pointer of the full (new) size, which
        // is what `___ibv_query_port` passes to the provider.
        let rc = unsafe { ffi::___ibv_query_port(self.as_ptr(), port, &mut a) };
        if rc != 0 {
            return Err(Error::from_ret(
                "ibv_query_port",
                rc,
                format!("{} port {port}", self.inner.name),
            ));
        }
        Ok(PortAttr {
            state: PortState::from_raw(a.state),
            max_mtu: Mtu::from_raw(a.max_mtu),
            active_mtu: Mtu::from_raw(a.active_mtu),
            gid_tbl_len: a.gid_tbl_len,
            lid: a.lid,
            max_msg_sz: a.max_msg_sz,
            link_layer: match u32::from(a.link_layer) {
                1 => LinkLayer::Infiniband,
                2 => LinkLayer::Ethernet,
                _ => LinkLayer::Unspecified,
            },
        })
    }

    /// Reads one GID table entry with its type and network device.
    pub fn query_gid(&self, port: u8, index: u32) -> Result<GidEntry> {
        self.query_gid_typed(port, index, None)
    }

    fn query_gid_typed(&self, port: u8, index: u32, known: Option<GidType>) -> Result<GidEntry> {
        let mut gid = ffi::ibv_gid { raw: [0; 16] };
        let idx = c_int::try_from(index)
            .map_err(|_| Error::InvalidArgument(format!("gid index {index}")))?;
        // SAFETY: context open, `gid` is a valid out-pointer.
        let rc = unsafe { ffi::ibv_query_gid(self.as_ptr(), port, idx, &mut gid) };
        if rc != 0 {
            return Err(Error::from_ret(
                "ibv_query_gid",
                rc,
                format!("{} port {port} index {index}", self.inner.name),
            ));
        }
        // SAFETY: every bit pattern is a valid `[u8; 16]`.
        let gid = Gid(unsafe { gid.raw });
        let base = format!(
            "/sys/class/infiniband/{}/ports/{port}/gid_attrs",
            self.inner.name
        );
        let gid_type = known.unwrap_or_else(|| {
            std::fs::read_to_string(format!("{base}/types/{index}"))
                .ok()
                .and_then(|s| GidType::parse_sysfs(&s))
                .unwrap_or(GidType::Ib)
        });
        let netdev = std::fs::read_to_string(format!("{base}/ndevs/{index}"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        Ok(GidEntry {
            index,
            gid,
            gid_type,
            netdev,
        })
    }

    /// The non-empty entries of the port's GID table.
    pub fn gid_table(&self, port: u8) -> Result<Vec<GidEntry>> {
        let attr = self.query_port(port)?;
        let len = attr.gid_tbl_len.max(0) as u32;
        let types = format!(
            "/sys/class/infiniband/{}/ports/{port}/gid_attrs/types",
            self.inner.name
        );
        let mut v = Vec::new();
        for i in 0..len {
            // On RoCE an unpopulated entry has no readable type: skip it without querying.
            let known = match std::fs::read_to_string(format!("{types}/{i}")) {
                Ok(s) => GidType::parse_sysfs(&s),
                Err(_) if attr.link_layer == LinkLayer::Ethernet => continue,
                Err(_) => None,
            };
            match self.query_gid_typed(port, i, known) {
                Ok(e) if !e.gid.is_zero() => v.push(e),
                // Empty, or unpopulated entries reporting EINVAL/ENODATA.
                Ok(_) | Err(_) => {}
            }
        }
        Ok(v)
    }

    /// The default GID index of a port: a RoCE v2 IPv4-mapped GID when present, else RoCE v2,
    /// else index 0.
    ///
    /// Computed once per context and port (later table changes are not seen; pass an explicit
    /// index to follow them).
    pub fn default_gid_index(&self, port: u8) -> Result<u32> {
        let cached = |c: &Vec<(u8, u32)>| c.iter().find(|(p, _)| *p == port).map(|(_, i)| *i);
        if let Some(i) = cached(
            &self
                .inner
                .default_gid
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        ) {
            return Ok(i);
        }
        let i = choose_gid_index(&self.gid_table(port)?);
        self.inner
            .default_gid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((port, i));
        Ok(i)
    }

    /// The device's async events (QP errors, port changes, ...) as a stream. Only one stream
    /// may exist per context at a time; needs a tokio runtime.
    pub fn async_events(&self) -> Result<crate::event::AsyncEvents> {
        crate::event::AsyncEventSource::new(self.clone())
    }

    /// Creates a completion channel (one channel may serve several CQs). Needs a tokio runtime:
    /// the channel's driver task is spawned on it.
    pub fn create_comp_channel(&self) -> Result<crate::CompletionChannel> {
        crate::CompletionChannel::new(self)
    }
}

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
    fn from_raw(v: u32) -> Self {
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
