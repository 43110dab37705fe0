//! A virtual LAN of Linux network namespaces, for running real `lanswarm`
//! nodes with mDNS on one machine without sending any multicast on the
//! machine's own network (see "The test LAN" in the design notes).
//!
//! ```text
//!   netns <tag>-lan:   br0 (bridge, multicast snooping off)
//!                       |  p0    |  p1    |  p2 ...   (veth ends)
//!   netns <tag>-h0:   eth0 A.B.C.1/24, lo
//!   netns <tag>-h1:   eth0 A.B.C.2/24, lo
//!   ...
//! ```
//!
//! [`VirtualLan`] builds this with iproute2 (`ip netns add`, a bridge and
//! one veth pair per host) and deletes every namespace it created when it
//! is dropped, which also deletes the veths and the bridge. Interface
//! names can be fixed (`br0`, `eth0`, `p<i>`) because each lives in its
//! own namespace; namespace names must be unique, and [`unique_tag`] makes
//! them `<prefix><pid>n<counter>`. A run killed before it could clean up
//! leaves namespaces named after a pid that is gone; [`sweep_stale`]
//! removes them.
//!
//! The caller's process stays in the root namespace, which has no route
//! into the LAN. [`connect_in`] opens a TCP connection from inside a host
//! (a short-lived thread joins the namespace with `setns(2)`; the socket
//! stays in the namespace it was created in), so a node's API on that
//! host's `127.0.0.1` can be called without a process per call.
//!
//! Everything here needs root (and iproute2); [`missing_privileges`] says
//! why it cannot work before anything is tried.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

/// `CLONE_NEWNET`, the namespace type for `setns(2)`.
const CLONE_NEWNET: i32 = 0x4000_0000;

/// Serialises `ip netns add/del`: concurrent first use of `/run/netns` by
/// iproute2 can stack mounts.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Counter that makes each [`unique_tag`] of this process unique.
static NEXT_TAG: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
    fn geteuid() -> u32;
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Why a virtual LAN cannot be built here (not root, no `ip`), if it
/// cannot.
pub fn missing_privileges() -> Option<String> {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    if unsafe { geteuid() } != 0 {
        return Some("not running as root".to_owned());
    }
    if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Some("`ip` (iproute2) is not installed".to_owned());
    }
    None
}

/// Run `ip` with `args`; an error carries the command and its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The names in `ip netns list`.
pub fn netns_list() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Send signal `sig` (e.g. 15 for SIGTERM) to process `pid`.
pub fn signal(pid: u32, sig: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SIGKILL every process in namespace `ns`, then delete it.
pub fn destroy_netns(ns: &str) -> Result<(), String> {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let _ = signal(pid, 9);
        }
    }
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "del", ns])
}

/// A name prefix unique to this process and call: `<prefix><pid>n<k>`.
/// [`sweep_stale`] recognises it.
pub fn unique_tag(prefix: &str) -> String {
    let k = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}n{k}", std::process::id())
}

/// Delete the namespaces named `<prefix><pid>...` whose process `pid` is
/// gone: left behind by a run that was killed before it could clean up.
/// Returns the names removed.
pub fn sweep_stale(prefix: &str) -> Vec<String> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for ns in netns_list() {
        let Some(rest) = ns.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('n').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
            match destroy_netns(&ns) {
                Ok(()) => removed.push(ns),
                Err(e) => eprintln!("netns: removing stale {ns}: {e}"),
            }
        }
    }
    removed
}

/// Move the calling thread (only it, not the rest of the process) into
/// network namespace `ns` for good: every socket it creates from now on,
/// and every thread it spawns, belongs to `ns`. Meant for a dedicated
/// thread, e.g. one that then runs a current-thread async runtime.
pub fn enter(ns: &str) -> io::Result<()> {
    let f = File::open(format!("{NETNS_DIR}/{ns}"))?;
    // SAFETY: setns(2) on a valid, open namespace fd; it changes only the
    // calling thread's network namespace.
    if unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Open a TCP connection to `addr` from inside network namespace `ns`.
/// The calling thread's own namespace does not change.
pub fn connect_in(ns: &str, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // Only this short-lived thread joins the namespace.
            enter(ns)?;
            TcpStream::connect_timeout(&addr, timeout)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("connect thread panicked")))
    })
}

/// A LAN of network namespaces: one namespace holding a bridge, and one
/// per host, each joined to the bridge by a veth pair. Every namespace it
/// created is deleted on [`destroy`](Self::destroy) or drop, after killing
/// any process still inside.
#[derive(Debug)]
pub struct VirtualLan {
    tag: String,
    lan_ns: String,
    subnet: [u8; 3],
    hosts: Vec<(String, Ipv4Addr)>,
    /// Namespaces created and not yet deleted, in creation order.
    namespaces: Vec<String>,
}

impl VirtualLan {
    /// Create the bridge namespace `<tag>-lan`. Hosts get addresses in
    /// `subnet.0/24`, from `.1` up.
    pub fn new(tag: &str, subnet: [u8; 3]) -> Result<Self, String> {
        let mut lan = VirtualLan {
            tag: tag.to_owned(),
            lan_ns: format!("{tag}-lan"),
            subnet,
            hosts: Vec::new(),
            namespaces: Vec::new(),
        };
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            ip(&["netns", "add", &lan.lan_ns])?;
            lan.namespaces.push(lan.lan_ns.clone());
        }
        let ns = lan.lan_ns.as_str();
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", ns, "link", "set", "br0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(lan)
    }

    /// Add host `i` (the next index): namespace `<tag>-h<i>` with `lo` and
    /// `eth0` up, `eth0` at `subnet.<i+1>/24` and its peer `p<i>` on the
    /// bridge. Returns `i`.
    pub fn add_host(&mut self) -> Result<usize, String> {
        let i = self.hosts.len();
        let last = u8::try_from(i + 1)
            .ok()
            .filter(|b| *b < 255)
            .ok_or_else(|| format!("a /24 holds at most 254 hosts, not {}", i + 1))?;
        let ns = format!("{}-h{i}", self.tag);
        let [a, b, c] = self.subnet;
        let host_ip = Ipv4Addr::new(a, b, c, last);
        let port = format!("p{i}");
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
        }
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            &ns,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.lan_ns,
        ])?;
        ip(&[
            "-n",
            &self.lan_ns,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        self.hosts.push((ns, host_ip));
        Ok(i)
    }

    /// The tag every namespace name starts with.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are no hosts yet.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i`'s network namespace.
    pub fn host_ns(&self, i: usize) -> &str {
        &self.hosts[i].0
    }

    /// Host `i`'s address on the LAN.
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].1
    }

    /// Take host `i`'s link to the bridge down: it is cut off from the LAN.
    pub fn link_down(&self, i: usize) -> Result<(), String> {
        ip(&["-n", self.host_ns(i), "link", "set", "eth0", "down"])
    }

    /// Bring host `i`'s link back up.
    pub fn link_up(&self, i: usize) -> Result<(), String> {
        ip(&["-n", self.host_ns(i), "link", "set", "eth0", "up"])
    }

    /// Kill every process left in the LAN's namespaces and delete them,
    /// newest first. Idempotent. Returns what could not be deleted.
    pub fn destroy(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some(ns) = self.namespaces.pop() {
            if let Err(e) = destroy_netns(&ns) {
                errors.push(e);
            }
        }
        errors
    }
}

impl Drop for VirtualLan {
    fn drop(&mut self) {
        for e in self.destroy() {
            eprintln!("netns teardown: {e}");
        }
    }
}
