//! Devices, device contexts, port attributes and the GID table.

use std::ffi::CStr;
use std::fmt;
use std::os::raw::c_int;
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rdma_sys as ffi;

use crate::error::{Error, Result};

mod attr;

pub use attr::{
    choose_gid_index, DeviceAttr, Gid, GidEntry, GidType, LinkLayer, Mtu, PortAttr, PortState,
};

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

/// An owner that must outlive a verbs object built on it (see
/// [`QueuePairBuilder::keep_alive`](crate::QueuePairBuilder::keep_alive),
/// [`Context::from_raw_borrowed`]).
pub type KeepAlive = Box<dyn std::any::Any + Send + Sync>;

pub(crate) struct ContextInner {
    pub(crate) ctx: NonNull<ffi::ibv_context>,
    pub(crate) name: String,
    pub(crate) events_taken: AtomicBool,
    /// Default GID index per port, computed once (a GID-table scan is ~3 syscalls per entry).
    default_gid: Mutex<Vec<(u8, u32)>>,
    /// `None`: we opened the context and close it. `Some`: another library (librdmacm)
    /// opened it; this owner keeps it open and is dropped after every child object.
    borrowed_from: Option<KeepAlive>,
}

ibverbs_thread_safe!(ContextInner);

impl Drop for ContextInner {
    fn drop(&mut self) {
        if self.borrowed_from.is_some() {
            // Not ours to close: the owner (dropped with the fields, after this) releases it.
            return;
        }
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
                borrowed_from: None,
            }),
        })
    }

    /// Wraps a context another library opened, without opening the device again: librdmacm
    /// gives each `rdma_cm_id` its own library-wide `ibv_context` (`id->verbs`), and a QP
    /// connected through the id must be created on a PD of that context. The context is never
    /// closed here; `owner` is kept until every PD, CQ, channel and QP built on it is gone, then
    /// dropped.
    ///
    /// # Safety
    /// `ctx` must be a valid `ibv_context` that stays open for as long as `owner` lives (for
    /// librdmacm: an `rdma_cm_id` bound to the device, whose reference keeps the device's
    /// context open even after the device is removed). Nothing else may read the context's
    /// async-event fd while [`Context::async_events`] is in use.
    pub unsafe fn from_raw_borrowed(ctx: NonNull<ffi::ibv_context>, owner: KeepAlive) -> Self {
        // SAFETY: `ctx` is valid (the caller's contract); `device` is set by libibverbs for
        // every context; the name is a NUL-terminated string inside the device, copied out.
        let name = unsafe {
            let p = ffi::ibv_get_device_name((*ctx.as_ptr()).device);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Self {
            inner: Arc::new(ContextInner {
                ctx,
                name,
                events_taken: AtomicBool::new(false),
                default_gid: Mutex::new(Vec::new()),
                borrowed_from: Some(owner),
            }),
        }
    }

    /// The raw context, for a connection manager that must match it against an
    /// `rdma_cm_id`'s device (`id->verbs`). Valid while this `Context` (or a clone) lives.
    pub fn as_raw(&self) -> NonNull<ffi::ibv_context> {
        self.inner.ctx
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
}
