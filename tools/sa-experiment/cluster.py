"""One run: the cluster's real binaries started inside emulated hosts, a
status poller, the fault timeline and sa-load, all logged under the run's
folder.
"""
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request

from scenario import process_names

PORT = {"coord": 7700, "enc": 7710, "stage": 7720, "http": 8000}


class Cluster:
    def __init__(self, net, run, model_dir, bin_dir, keys, out):
        self.net, self.run, self.model, self.bin, self.keys, self.out = (
            net, run, model_dir, bin_dir, keys, out)
        self.procs = {}   # name -> Popen
        self.argv = {}    # name -> argv (for restarts)
        self.logs = os.path.join(out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        c = run["cluster"]
        self.names = process_names(c)
        self.active_replicas = c["replicas"]
        h = run["hosts"]
        for n in self.names:
            cpu = h["coordinator_cpu"] if n == "coord" else \
                h["encoder_cpu"] if n.startswith("enc") else h["stage_cpu"]
            net.add(n, cpu, h["bandwidth"])
        self.coord_addr = "tcp://%s:%d" % (net.hosts["coord"].ip, PORT["coord"])

    def api_key_file(self):
        """The HTTP API key of the run (made once, 0600)."""
        path = os.path.join(self.keys, "http-api-key")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, (os.urandom(24).hex() + "\n").encode())
            os.close(fd)
        return path

    def load_target(self):
        """sa-load's arguments that say where to send."""
        if self.run["load"]["transport"] == "http":
            return ["--http", "http://%s:%d" % (self.net.hosts["coord"].ip, PORT["http"]),
                    "--api-key-file", self.api_key_file()]
        return ["--coordinator", self.coord_addr] + self._sec("client")

    def _sec(self, role):
        return ["--key", os.path.join(self.keys, role + ".key"),
                "--allow", os.path.join(self.keys, "allow")]

    def _argv(self, name):
        c, ip = self.run["cluster"], self.net.hosts[name].ip
        threads = str(self.run["threads"])
        if name == "coord":
            a = [os.path.join(self.bin, "sa-coordinator"), "--model", self.model,
                 "--listen", self.coord_addr, "--max-requests", "100000",
                 "--extra-microbatches", str(c["extra_microbatches"]),
                 "--heartbeat-timeout-ms", str(c["heartbeat_timeout_ms"])] + self._sec("coordinator")
            if c["state"]:
                a += ["--state", os.path.join(self.out, "state")]
            # HTTP always: the API when the load uses it, /metrics for every run
            a += ["--http", "%s:%d" % (ip, PORT["http"]), "--api-key-file", self.api_key_file()]
            return a
        if name.startswith("enc"):
            return [os.path.join(self.bin, "sa-encoder"), "--model", self.model,
                    "--listen", "tcp://%s:%d" % (ip, PORT["enc"]), "--coordinator",
                    self.coord_addr, "--node-id", name, "--backend-threads", threads
                    ] + self._sec("encoder")
        r, s = (int(x) for x in name[1:].split("s"))
        n_layers = self.n_layers
        first, last = n_layers * s // c["stages"], n_layers * (s + 1) // c["stages"]
        return [os.path.join(self.bin, "sa-worker"), "--model", self.model,
                "--layers", "%d:%d" % (first, last), "--listen", "tcp://%s:%d" % (ip, PORT["stage"]),
                "--coordinator", self.coord_addr, "--replica", "r%d" % r, "--node-id", name,
                "--kv-mem", c["kv_mem"], "--threads", threads] + self._sec("stage")

    def start(self, name):
        argv = self.argv.setdefault(name, self._argv(name))
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(self.run["threads"]),
                   SA_LOG_LEVEL=os.environ.get("SA_LOG_LEVEL") or "info")
        log = open(os.path.join(self.logs, name + ".log"), "a")
        log.write("=== %.3f start %s\n" % (time.time(), " ".join(argv)))
        log.flush()
        self.procs[name] = subprocess.Popen(self.net.hosts[name].command(argv), stdout=log,
                                            stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        log.close()

    def signal(self, name, sig):
        p = self.procs.get(name)
        if p and p.poll() is None:
            os.kill(p.pid, sig)
            if sig == signal.SIGKILL:
                p.wait()
            return True
        return False

    def metrics(self, timeout=5):
        """The coordinator's /metrics text (None if it does not answer)."""
        with open(self.api_key_file()) as f:
            key = f.read().strip()
        req = urllib.request.Request("http://%s:%d/metrics" % (self.net.hosts["coord"].ip,
                                                              PORT["http"]),
                                     headers={"Authorization": "Bearer " + key})
        try:
            return urllib.request.urlopen(req, timeout=timeout).read().decode()
        except (OSError, ValueError):
            return None

    def client(self, *args, role="client", timeout=10):
        argv = [os.path.join(self.bin, "sa-client")] + list(args) + [
            "--coordinator", self.coord_addr] + self._sec(role)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def status(self):
        try:
            r = self.client("status", "--json", timeout=5)
        except (subprocess.TimeoutExpired, OSError):  # a missed poll, not the end of polling
            return None
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None

    def up(self, n_layers, timeout=180):
        """Starts every process of the active replicas and waits until the
        coordinator counts them all ready."""
        self.n_layers = n_layers
        spare = {"r%ds%d" % (r, s) for r in range(self.active_replicas,
                                                   self.active_replicas +
                                                   self.run["cluster"]["spare_replicas"])
                 for s in range(self.run["cluster"]["stages"])}
        for n in self.names:
            if n not in spare:
                self.start(n)
        self.wait_ready(self.active_replicas, timeout)

    def wait_ready(self, replicas, timeout):
        deadline = time.time() + timeout
        want_enc = self.run["cluster"]["encoders"]
        st = None
        while time.time() < deadline:
            for n, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError("%s exited with %s before the cluster was up; see %s" % (
                        n, p.returncode, os.path.join(self.logs, n + ".log")))
            st = self.status()
            if st:
                enc = sum(1 for w in st.get("workers", [])
                          if w["role"] == "encoder" and w["healthy"])
                if st.get("replicas_ready", 0) >= replicas and enc >= want_enc:
                    return st
            time.sleep(0.5)
        raise RuntimeError("the cluster was not ready after %d s (last status: %s)" % (
            timeout, json.dumps(st)[:500]))

    def down(self):
        for name in list(self.procs):
            self.signal(name, signal.SIGKILL)


class Poller(threading.Thread):
    """Asks the coordinator for its status every interval seconds; each
    answer (or its absence) is a line of status.jsonl."""

    def __init__(self, cluster, path, interval=0.5):
        super().__init__(daemon=True)
        self.cluster, self.path, self.interval = cluster, path, interval
        self.stopping = threading.Event()

    def run(self):
        with open(self.path, "w") as f:
            while not self.stopping.is_set():
                t = time.time()
                st = self.cluster.status()  # waits (up to 5 s) for a coordinator restarting
                line = {"asked": t, "unix": time.time(), "ok": st is not None}
                if st:
                    line["replicas_ready"] = st.get("replicas_ready")
                    line["requests_running"] = st.get("requests_running")
                    line["requests_queued"] = st.get("requests_queued")
                    line["workers"] = {w["node_id"]: w["healthy"] for w in st.get("workers", [])}
                f.write(json.dumps(line) + "\n")
                f.flush()
                self.stopping.wait(max(0.0, self.interval - (time.time() - t)))


class Faults(threading.Thread):
    """Runs the fault timeline (times since t0); each action is a line of
    faults.jsonl with its time."""

    def __init__(self, cluster, faults, t0, path):
        super().__init__(daemon=True)
        self.cluster, self.t0, self.path = cluster, t0, path
        self.events = []
        for f in faults:
            self.events.append((f["at"], f["action"], f))
            if "for" in f:
                undo = {"stop": "cont", "partition": "heal", "cpu": "cpu_restore",
                        "drain": "undrain"}[f["action"]]
                self.events.append((f["at"] + f["for"], undo, f))
            if f["action"] == "kill" and "restart_after" in f:
                self.events.append((f["at"] + f["restart_after"], "restart", f))
        self.events.sort(key=lambda e: e[0])
        self.stopping = threading.Event()
        self.errors = []

    def act(self, action, f):
        c, t = self.cluster, f["target"]
        host = c.net.hosts.get(t)
        if action == "kill":
            return "killed" if c.signal(t, signal.SIGKILL) else "was not running"
        if action == "stop":
            return "stopped" if c.signal(t, signal.SIGSTOP) else "was not running"
        if action == "cont":
            return "continued" if c.signal(t, signal.SIGCONT) else "was not running"
        if action == "restart":
            c.signal(t, signal.SIGKILL)
            c.start(t)
            return "started"
        if action == "partition":
            host.link_up(False)
            return "link down"
        if action == "heal":
            host.link_up(True)
            return "link up"
        if action == "cpu":
            f["_old_cpu"] = host.cpu
            host.set_cpu(f["cpu"])
            return "cpu %.3g" % f["cpu"]
        if action == "cpu_restore":
            host.set_cpu(f.get("_old_cpu"))
            return "cpu %s" % f.get("_old_cpu")
        if action in ("drain", "undrain"):
            args = [action, t] + (["--no-wait"] if action == "drain" else [])
            r = c.client(*args, role="operator", timeout=30)
            return (r.stdout + r.stderr).strip()[-200:] or "exit %d" % r.returncode
        if action == "add_replica":
            r = int(t[1:])
            for s in range(c.run["cluster"]["stages"]):
                c.start("r%ds%d" % (r, s))
            return "started %d stages" % c.run["cluster"]["stages"]
        raise AssertionError(action)

    def run(self):
        with open(self.path, "w") as log:
            for at, action, f in self.events:
                if self.stopping.wait(max(0.0, self.t0 + at - time.time())):
                    return
                t = time.time()
                try:
                    result = self.act(action, f)
                except Exception as e:  # logged, and the run goes on
                    result = "error: %s" % e
                    self.errors.append(result)
                line = {"unix": t, "at": at, "action": action, "target": f["target"],
                        "result": result}
                log.write(json.dumps(line) + "\n")
                log.flush()
                print("sa-experiment: t=%5.1fs %s %s: %s" % (t - self.t0, action, f["target"],
                                                             result), flush=True)
