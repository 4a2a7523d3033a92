#!/bin/sh
# PID 1 of the tokio-rdma soft-RoCE VM. Boot steps live here (and the module list in
# modules.txt) so later work can extend them in one place.
#
# Kernel parameters arrive as environment variables:
#   tokio_rdma_ip       this host's address (192.0.2.N)
#   tokio_rdma_netdev   dummy0 (one host, rxe loops back) or eth0 (two hosts, virtio-net)
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "XTASK_BOOT_ERROR: $*"; echo "XTASK_EXIT=125"; poweroff -f; }

while read -r m; do
    case "$m" in ''|'#'*) continue ;; esac
    modprobe "$m" || fail "modprobe $m"
done < /etc/xtask-modules

R=/newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro hostroot $R || fail "mount host root"
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
mount -t tmpfs tmp $R/tmp
mount -t tmpfs run $R/run
mkdir -p $R/run/xtask
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xtaskrun $R/run/xtask || fail "mount run dir"
project=$(cat $R/run/xtask/project_dir)
# A project under /tmp or /run lives below a fresh tmpfs here: make its mount point.
mkdir -p "$R$project" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 project "$R$project" || fail "mount project"

ip="${tokio_rdma_ip:-192.0.2.1}"
netdev="${tokio_rdma_netdev:-dummy0}"
ip link set lo up
ip link show "$netdev" >/dev/null 2>&1 || ip link add "$netdev" type dummy || fail "create $netdev"
ip addr add "$ip/24" dev "$netdev" || fail "address $ip on $netdev"
ip link set "$netdev" up
# IPv6 too (2001:db8::/32 is the documentation prefix; `nodad` makes it usable at once), so
# rxe gets an IPv6 GID and connection tests can use both families.
ip6="2001:db8::${ip##*.}"
chroot $R /bin/ip -6 addr add "$ip6/64" dev "$netdev" nodad || echo "xtask: no IPv6 address on $netdev"
hostname "rdma-$ip"
chroot $R /usr/bin/rdma link add rxe0 type rxe netdev "$netdev" || fail "rdma link add rxe0"

echo "XTASK_BEGIN"
chroot $R /bin/sh /run/xtask/cmd.sh
status=$?
echo "$status" > $R/run/xtask/status
sync
echo "XTASK_EXIT=$status"
poweroff -f
