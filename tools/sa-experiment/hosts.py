"""Emulated hosts on one machine: a network namespace each, joined by veth
pairs to one bridge, each with its own CPU budget (a cgroup v1 CPU quota)
and optional link bandwidth (tc tbf on both ends of its veth).

Everything this module makes is named with PREFIX, so that clean() finds and
removes what a killed run left behind (processes first, then namespaces,
links and cgroups). The kernel here has no netem: links can be limited in
bandwidth (tbf) and cut (link down), not delayed or made lossy.
"""
import fcntl
import os
import re
import signal
import subprocess
import time

PREFIX = "sax"
BRIDGE = PREFIX + "-br0"
SUBNET = "10.88.0"
GATEWAY = SUBNET + ".1"
CGROOT = "/sys/fs/cgroup/cpu/" + PREFIX
# Each host's processes also join a cpuacct group of the same name (where
# that hierarchy is mounted on its own): the CPU they used, the dead included
ACROOT = "/sys/fs/cgroup/cpuacct/" + PREFIX
PERIOD_US = 10000  # CFS period: short, so a small quota is not a 100 ms stall
LOCK = "/run/sa-experiment.lock"  # one run at a time: hosts share names


def lock():
    """Takes the machine's experiment lock (held until the process exits).
    Raises RuntimeError naming the holder if another run has it."""
    if getattr(lock, "held", None):
        return
    f = open(LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        raise RuntimeError("another sa-experiment is running (pid %s); its hosts are in use" %
                           (f.read().strip() or "?"))
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    lock.held = f  # kept open: the lock lasts as long as this process


def _run(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(args), (r.stderr or r.stdout).strip()))
    return r


def check_machine():
    """The reasons this machine cannot host emulated hosts (empty: it can)."""
    why = []
    if os.geteuid() != 0:
        why.append("needs root (network namespaces, cgroups)")
    if not os.path.isdir("/sys/fs/cgroup/cpu"):
        why.append("no cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
    for tool in ("ip", "tc"):
        if subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True).returncode:
            why.append("no '%s' (Debian: iproute2)" % tool)
    return why


def _cg_procs(path):
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _acct():
    """The cpuacct hierarchy when mounted apart from cpu (else None: absent,
    or the same hierarchy as cpu, whose groups then count CPU themselves)."""
    root, cpu = os.path.dirname(ACROOT), os.path.dirname(CGROOT)
    if not os.path.isdir(root) or (os.path.isdir(cpu) and os.path.samefile(root, cpu)):
        return None
    return root


def clean():
    """Removes every host of an earlier run: kills what runs in its cgroups,
    deletes its namespaces, links and cgroups. Safe to call at any time."""
    if os.path.isdir(CGROOT):
        for name in os.listdir(CGROOT):
            path = os.path.join(CGROOT, name)
            if not os.path.isdir(path):
                continue
            for _ in range(50):
                pids = _cg_procs(path)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
            try:
                os.rmdir(path)
            except OSError:
                pass
    out = _run("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(PREFIX + "-"):
            for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run("ip", "netns", "del", ns, check=False)
    out = _run("ip", "-o", "link", "show", check=False).stdout
    for m in re.finditer(r"^\d+: (%s-[^:@]+)" % PREFIX, out, re.M):
        _run("ip", "link", "del", m.group(1), check=False)
    # the cpuacct groups hold the same processes, killed above
    for root in (ACROOT if _acct() else None, CGROOT):
        if not root or not os.path.isdir(root):
            continue
        for name in os.listdir(root):
            path = os.path.join(root, name)
            for _ in range(50 if os.path.isdir(path) else 0):  # a dead process leaves late
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    time.sleep(0.05)
        try:
            os.rmdir(root)
        except OSError:
            pass


class Host:
    """One emulated host: namespace PREFIX-NAME, address SUBNET.N, a cgroup
    with cpu CPUs (None: unlimited), links limited to bandwidth (a tc rate
    such as '100mbit'; None: unlimited)."""

    def __init__(self, name, index, cpu=None, bandwidth=None):
        if not re.fullmatch(r"[a-z0-9]{1,10}", name):
            raise ValueError("host name '%s': 1..10 of a-z, 0-9" % name)
        self.name, self.cpu, self.bandwidth = name, cpu, bandwidth
        self.ns = "%s-%s" % (PREFIX, name)
        self.link = "%s-%s" % (PREFIX, name)  # the root side of its veth
        self.ip = "%s.%d" % (SUBNET, 10 + index)
        self.cgroup = os.path.join(CGROOT, name)
        self.acct = os.path.join(ACROOT, name) if _acct() else None

    def create(self):
        _run("ip", "netns", "add", self.ns)
        _run("ip", "link", "add", self.link, "type", "veth", "peer", "name", "eth0",
             "netns", self.ns)
        _run("ip", "link", "set", self.link, "master", BRIDGE, "up")
        _run("ip", "-n", self.ns, "addr", "add", self.ip + "/24", "dev", "eth0")
        _run("ip", "-n", self.ns, "link", "set", "eth0", "up")
        _run("ip", "-n", self.ns, "link", "set", "lo", "up")
        os.makedirs(self.cgroup, exist_ok=True)
        if self.acct:
            os.makedirs(self.acct, exist_ok=True)
        self.set_cpu(self.cpu)
        if self.bandwidth:
            for args in (("tc", "qdisc", "add", "dev", self.link),
                         ("ip", "netns", "exec", self.ns, "tc", "qdisc", "add", "dev", "eth0")):
                _run(*args, "root", "tbf", "rate", self.bandwidth, "burst", "64kb",
                     "latency", "100ms")

    def set_cpu(self, cpu):
        """CPU quota in CPUs (0.25 = a quarter of one core); None = none."""
        with open(os.path.join(self.cgroup, "cpu.cfs_quota_us"), "w") as f:
            f.write("-1")
        with open(os.path.join(self.cgroup, "cpu.cfs_period_us"), "w") as f:
            f.write(str(PERIOD_US))
        if cpu:
            with open(os.path.join(self.cgroup, "cpu.cfs_quota_us"), "w") as f:
                f.write(str(max(1000, int(cpu * PERIOD_US))))
        self.cpu = cpu

    def usage(self):
        """What the host's processes used so far: CPU seconds (None without
        the cpuacct controller) and the CFS periods, throttled periods and
        throttled seconds of its quota."""
        u = {"cpu_s": None}
        try:  # a cpuacct group of its own, or cpu and cpuacct mounted together
            with open(os.path.join(self.acct or self.cgroup, "cpuacct.usage")) as f:
                u["cpu_s"] = int(f.read()) / 1e9
        except (OSError, ValueError):
            pass
        try:
            with open(os.path.join(self.cgroup, "cpu.stat")) as f:
                st = dict(line.split()[:2] for line in f if len(line.split()) >= 2)
            u.update(periods=int(st.get("nr_periods", 0)),
                     throttled=int(st.get("nr_throttled", 0)),
                     throttled_s=int(st.get("throttled_time", 0)) / 1e9)
        except (OSError, ValueError):
            pass
        return u

    def link_up(self, up):
        """Connects (True) or cuts (False) the host from the bridge."""
        _run("ip", "link", "set", self.link, "up" if up else "down")

    def command(self, argv):
        """argv run inside the host: its namespace and its cgroup."""
        # the cgroup first: inside, `ip netns exec` mounts its own /sys
        acct = ' && echo $$ > "%s/cgroup.procs"' % self.acct if self.acct else ""
        return ["sh", "-c", 'echo $$ > "%s/cgroup.procs"%s && exec ip netns exec %s "$@"' % (
            self.cgroup, acct, self.ns), "sh"] + list(argv)


class Network:
    """The bridge and its hosts; a context manager that always tears down."""

    def __init__(self):
        self.hosts = {}

    def __enter__(self):
        why = check_machine()
        if why:
            raise RuntimeError("cannot make emulated hosts: " + "; ".join(why))
        lock()
        clean()
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", GATEWAY + "/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        os.makedirs(CGROOT, exist_ok=True)
        if _acct():
            os.makedirs(ACROOT, exist_ok=True)
        return self

    def usage(self):
        """Every host's usage() now, by name."""
        return {name: h.usage() for name, h in self.hosts.items()}

    def add(self, name, cpu=None, bandwidth=None):
        h = Host(name, len(self.hosts), cpu, bandwidth)
        h.create()
        self.hosts[name] = h
        return h

    def __exit__(self, *exc):
        clean()
        return False
