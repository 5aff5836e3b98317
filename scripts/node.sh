#!/usr/bin/env bash
# A single-node Kubernetes cluster, entirely inside one network namespace
# that this script creates: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and a kubelet (built from the upstream Go modules by
# scripts/control-plane.sh and scripts/node-build.sh), Debian's containerd
# with runc, and pods on a bridge inside that namespace. Every packet stays
# on the namespace's loopback or its bridge: the API server listens on the
# `kubernetes` Service's address (10.96.0.1:443), which is an address of the
# namespace itself, so pods reach it with their in-cluster config and
# no NAT. There is no kube-proxy: other ClusterIPs lead nowhere.
#
#   scripts/node.sh up [DIR]
#       starts the node in DIR (default: a new /tmp/tether-node-XXXXXX),
#       writes DIR/ready once the node is Ready, and runs until Ctrl-C,
#       SIGTERM, or the death of the process $TETHER_NODE_PARENT (if set);
#       then stops every process and removes every namespace, interface,
#       mount, cgroup and file it made. Use it from another terminal with
#         DIR/kubectl get nodes          (kubectl inside the namespace)
#         DIR/in-node <command>          (any command inside the namespace)
#   scripts/node.sh import DIR IMAGE.tar
#       imports an image archive into the node's containerd (k8s.io)
#
# Needs root, and Debian's containerd, runc and containernetworking-plugins
# (scripts/node-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

log() { printf '[node] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

NODE_NAME=tether-node
POD_CIDR=10.88.0.0/24
NODE_IP=10.88.0.1
API_IP=10.96.0.1
SERVICE_CIDR=10.96.0.0/24

import_image() {
  local dir=$1 archive=$2
  ctr --address "$dir/containerd.sock" -n k8s.io images import "$archive" >&2
}

if [[ "${1:-}" == import ]]; then
  [[ $# -eq 3 ]] || die "usage: $0 import DIR IMAGE.tar"
  import_image "$2" "$3"
  exit 0
fi
[[ "${1:-}" == up ]] || die "usage: $0 up [DIR] | import DIR IMAGE.tar"
[[ $(id -u) -eq 0 ]] || die "the node needs root (network namespace, cgroups, mounts)"
for tool in containerd containerd-shim-runc-v2 runc ctr ip nsenter unshare openssl; do
  command -v "$tool" >/dev/null || die "$tool is missing: scripts/node-deps.sh installs it"
done
[[ -x /usr/lib/cni/bridge ]] || die "CNI plugins are missing: scripts/node-deps.sh installs them"

cp_bin=$(scripts/control-plane.sh)
node_bin=$(scripts/node-build.sh)
dir="${2:-}"
if [[ -z "$dir" ]]; then
  dir=$(mktemp -d /tmp/tether-node-XXXXXX)
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
id=$(basename "$dir" | tr -c 'a-zA-Z0-9\n' '-' | tail -c 13)
netns="tn-${id}"
cgroup_root="/tether-node-${id}"
echo "$netns" > "$dir/netns"

# --- cleanup: however the script ends -----------------------------------
run_netns_existed=false
[[ -e /run/netns ]] && run_netns_existed=true
run_containerd_existed=false
[[ -e /run/containerd ]] && run_containerd_existed=true

kill_everything() {
  # Processes in the namespace (the node's and host-network pods'), and
  # those in the node's cgroups (pods with a network of their own).
  local round pids
  for round in 1 2 3 4 5; do
    pids=""
    if [[ -e "/run/netns/$netns" ]]; then
      pids+=" $(ip netns pids "$netns" 2>/dev/null | tr '\n' ' ')"
    fi
    for hierarchy in /sys/fs/cgroup/*/; do
      if [[ -d "$hierarchy$cgroup_root" ]]; then
        pids+=" $(find "$hierarchy$cgroup_root" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')"
      fi
    done
    [[ -n "${supervised:-}" ]] && pids+=" $supervised"
    pids=$(echo "$pids" | tr ' ' '\n' | grep -E '^[0-9]+$' | grep -vx "$$" | sort -u | tr '\n' ' ' || true)
    [[ -z "${pids// /}" ]] && return 0
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.5
  done
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  log "stopping the node"
  kill_everything
  # Empty cgroups, leaves first.
  for hierarchy in /sys/fs/cgroup/*/; do
    if [[ -d "$hierarchy$cgroup_root" ]]; then
      find "$hierarchy$cgroup_root" -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
  done
  # (Pods' network namespaces are mounted under DIR, by
  # netns_mounts_under_state_dir, in the node's mount namespace: they went
  # with it.)
  ip netns del "$netns" 2>/dev/null || true
  # `ip netns add` made /run/netns a mount point: undo it when it was ours.
  if ! $run_netns_existed && [[ -z "$(ls -A /run/netns 2>/dev/null)" ]]; then
    while mountpoint -q /run/netns; do umount /run/netns || break; done
    rmdir /run/netns 2>/dev/null || true
  fi
  # Sockets of the shims (containerd keeps them under /run/containerd/s
  # whatever its state directory): ours no longer listen. Another node's
  # that still do are left alone, and so is the directory if it is not
  # empty or was there before.
  local sock
  for sock in /run/containerd/s/*; do
    [[ -S "$sock" ]] || continue
    ss -xlH 2>/dev/null | grep -qF "$sock" || rm -f "$sock"
  done
  if ! $run_containerd_existed; then
    rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  fi
  # Image layers and pod volumes were mounted inside the node's mount
  # namespace only; anything left under DIR is unmounted before removal.
  grep -F " $dir/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  if [[ "${TETHER_NODE_KEEP:-0}" != 1 ]]; then
    rm -rf "$dir"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- credentials --------------------------------------------------------
pki="$dir/pki"
mkdir -p "$pki"
(
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=tether-node-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout serving.key -out serving.csr -subj /CN=kube-apiserver 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
    "$API_IP" "$NODE_IP" > serving.ext
  openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out serving.crt -days 2 -extfile serving.ext 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
admin_token=$(openssl rand -hex 16)
echo "${admin_token},admin,uid-admin,\"system:masters\"" > "$pki/tokens.csv"
cat > "$dir/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tether-node
  cluster:
    server: https://127.0.0.1:443
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    token: $admin_token
contexts:
- name: tether-node
  context: {cluster: tether-node, user: admin}
current-context: tether-node
EOF

# --- configuration ------------------------------------------------------
mkdir -p "$dir/cni" "$dir/kubelet" "$dir/containerd" "$dir/logs"
: > "$dir/resolv.conf" # pods get no name server: nothing leaves by DNS
cat > "$dir/cni/10-tether.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "tether",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
    "ipam": {
      "type": "host-local", "dataDir": "$dir/cni-ipam",
      "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.88.0.10"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
EOF
cat > "$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:tether"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$dir/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
EOF
cat > "$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
containerRuntimeEndpoint: unix://$dir/containerd.sock
address: $NODE_IP
port: 10250
podLogsDir: $dir/pod-logs
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
failSwapOn: false
resolvConf: $dir/resolv.conf
clusterDomain: cluster.local
hairpinMode: none
maxPods: 30
localStorageCapacityIsolation: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
shutdownGracePeriod: 0s
EOF

# --- the network namespace ----------------------------------------------
ip netns add "$netns"
in_ns() { ip netns exec "$netns" "$@"; }
in_ns ip link set lo up
# A fixed MAC: a bridge without one takes the lowest MAC of its ports and
# changes it when that pod's veth goes, and every other pod keeps sending
# to the old gateway MAC until its ARP entry expires (their API requests
# hang for tens of seconds after any pod is deleted).
in_ns ip link add cni0 address 0a:58:0a:58:00:01 type bridge
in_ns ip addr add "$NODE_IP/24" dev cni0
in_ns ip link set cni0 up
# The kubernetes Service's address is the namespace's own (on its
# loopback device): pods reach the API server there, routed, not NATed.
in_ns ip addr add "$API_IP/32" dev lo

# Helpers for people and tests: run inside the node's namespace.
cat > "$dir/in-node" <<EOF
#!/bin/sh
exec nsenter --net=/run/netns/$netns -- "\$@"
EOF
cat > "$dir/kubectl" <<EOF
#!/bin/sh
exec nsenter --net=/run/netns/$netns -- "$cp_bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" "\$@"
EOF
chmod +x "$dir/in-node" "$dir/kubectl"

# --- the node's cgroups (v1 here; kubelet's cgroupRoot) -----------------
for hierarchy in /sys/fs/cgroup/*/; do
  [[ "$hierarchy" == */unified/ ]] && continue
  mkdir -p "$hierarchy$cgroup_root"
  if [[ -f "${hierarchy}cpuset.cpus" ]]; then
    cat "${hierarchy}cpuset.cpus" > "$hierarchy$cgroup_root/cpuset.cpus"
    cat "${hierarchy}cpuset.mems" > "$hierarchy$cgroup_root/cpuset.mems"
  fi
done

# --- the node's processes -----------------------------------------------
# One mount namespace for all of them (the kubelet's volume mounts must be
# what containerd sees), private to the node: its mounts vanish with it.
# The network namespace is entered without remounting /sys, which keeps
# the host's cgroup mounts that the kubelet and runc need.
cat > "$dir/supervise.sh" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
dir=$1 cp_bin=$2 node_bin=$3 pki=$4 node_ip=$5 service_cidr=$6 node_name=$7
start() { local name=$1; shift; "$@" >"$dir/logs/$name.log" 2>&1 & }
start etcd "$cp_bin/etcd" --data-dir "$dir/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster default=http://127.0.0.1:2380 --unsafe-no-fsync --log-level warn
start kube-apiserver "$cp_bin/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
  --bind-address 0.0.0.0 --secure-port 443 --advertise-address "$node_ip" \
  --cert-dir "$dir/apiserver-certs" --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" \
  --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" --service-cluster-ip-range "$service_cidr" \
  --kubelet-preferred-address-types InternalIP --endpoint-reconciler-type lease --v 1
start containerd containerd --config "$dir/containerd.toml"
until [[ -S "$dir/containerd.sock" ]]; do sleep 0.2; done
until "$cp_bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1; do sleep 0.5; done
start kube-controller-manager "$node_bin/kube-controller-manager" --kubeconfig "$dir/admin.kubeconfig" \
  --authentication-kubeconfig "$dir/admin.kubeconfig" --authorization-kubeconfig "$dir/admin.kubeconfig" \
  --bind-address 127.0.0.1 --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
  --use-service-account-credentials=false --leader-elect=false --cluster-name tether-node \
  --controllers '*,-bootstrapsigner,-tokencleaner' --v 1
start kube-scheduler "$node_bin/kube-scheduler" --kubeconfig "$dir/admin.kubeconfig" \
  --authentication-kubeconfig "$dir/admin.kubeconfig" --authorization-kubeconfig "$dir/admin.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --v 1
start kubelet "$node_bin/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/admin.kubeconfig" \
  --hostname-override "$node_name" --node-ip "$node_ip" --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki" --v 1
wait -n
echo "a node process exited" >&2
exit 1
EOF
chmod +x "$dir/supervise.sh"
unshare --mount --propagation slave -- nsenter --net="/run/netns/$netns" -- \
  "$dir/supervise.sh" "$dir" "$cp_bin" "$node_bin" "$pki" "$NODE_IP" "$SERVICE_CIDR" "$NODE_NAME" \
  > "$dir/logs/supervise.log" 2>&1 &
supervised=$!
disown "$supervised" # its end is noticed below, not reported by the shell

# --- ready: the node, its images, and the kubernetes Service -------------
kubectl_in() { "$dir/kubectl" "$@"; }
deadline=$(( $(date +%s) + 180 ))
until kubectl_in get --raw /readyz >/dev/null 2>&1 && [[ -S "$dir/containerd.sock" ]]; do
  kill -0 "$supervised" 2>/dev/null || { tail -n 20 "$dir"/logs/*.log >&2; die "the node stopped while starting"; }
  (( $(date +%s) < deadline )) || { tail -n 20 "$dir"/logs/*.log >&2; die "the API server did not come up"; }
  sleep 0.5
done
images="${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}/images"
mkdir -p "$images"
scripts/image.sh pause "$images/pause.tar" >/dev/null
import_image "$dir" "$images/pause.tar"
until kubectl_in wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s >/dev/null 2>&1; do
  kill -0 "$supervised" 2>/dev/null || { tail -n 20 "$dir"/logs/*.log >&2; die "the node stopped while starting"; }
  (( $(date +%s) < deadline )) || { tail -n 40 "$dir"/logs/kubelet.log >&2; die "node $NODE_NAME not Ready"; }
done
until kubectl_in get serviceaccount default -n default >/dev/null 2>&1; do sleep 0.5; done
touch "$dir/ready"
log "node $NODE_NAME Ready; KUBECONFIG=$dir/admin.kubeconfig inside namespace $netns"
log "  $dir/kubectl get pods -A      # kubectl inside the node's namespace"

# --- run until told to stop ---------------------------------------------
parent="${TETHER_NODE_PARENT:-}"
while kill -0 "$supervised" 2>/dev/null; do
  if [[ -n "$parent" ]] && ! kill -0 "$parent" 2>/dev/null; then
    exit 0
  fi
  sleep 1
done
tail -n 20 "$dir"/logs/*.log >&2
die "the node stopped"
