"""Scenario files: what to build, what load to send, what to break, when.

A scenario (YAML) is checked in full before anything starts: an unknown key,
a wrong type or a fault naming a process that will not exist is an error
with the key's path, never a silent default. See experiments/README.md for
the format.
"""
import copy
import itertools
import os
import re

import yaml

FAULT_ACTIONS = ("kill", "stop", "restart", "partition", "cpu", "drain", "undrain",
                 "add_replica")

DEFAULTS = {
    "model": {"preset": "medium", "seed": 1},
    "threads": 1,
    "hosts": {"stage_cpu": 0.2, "coordinator_cpu": 0.5, "encoder_cpu": 0.25,
              "bandwidth": None},
    "cluster": {"replicas": 1, "stages": 2, "encoders": 1, "spare_replicas": 0,
                "kv_mem": "64MiB", "state": True, "extra_microbatches": 1,
                "heartbeat_timeout_ms": 5000},
    "load": {"rate": None, "rate_per_replica": None, "concurrency": None,
             "duration": 60, "seed": 1, "timeout": 300, "warmup": 10, "drain": True,
             "transport": "rpc"},
    "faults": [],
}
TOP_KEYS = {"name", "description", "model", "threads", "hosts", "cluster", "workload",
            "workload_file", "load", "faults", "runs", "matrix", "baseline"}
RUN_KEYS = {"name", "hosts", "cluster", "load", "faults", "threads"}
MATRIX_KEYS = {"replicas", "rate", "rate_per_replica", "concurrency"}


class ScenarioError(ValueError):
    pass


def _num(v, path, lo, hi, integer=False, none_ok=False):
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and
                                                                  not isinstance(v, int)):
        raise ScenarioError("%s: must be %s" % (path, "an integer" if integer else "a number"))
    if not lo <= v <= hi:
        raise ScenarioError("%s: %g is outside [%g, %g]" % (path, v, lo, hi))
    return v


def _merge(base, over, path, allowed=None):
    """base with over's keys replacing it, one level of dicts deep."""
    if not isinstance(over, dict):
        raise ScenarioError("%s: must be a mapping" % path)
    out = copy.deepcopy(base)
    for k, v in over.items():
        if allowed is not None and k not in allowed:
            raise ScenarioError("%s: unknown key '%s'" % (path, k))
        if isinstance(out.get(k), dict) and k != "workload":
            if not isinstance(v, dict):
                raise ScenarioError("%s.%s: must be a mapping" % (path, k))
            for kk in v:
                if kk not in out[k]:
                    raise ScenarioError("%s.%s: unknown key '%s'" % (path, k, kk))
            out[k] = {**out[k], **v}
        else:
            out[k] = copy.deepcopy(v)
    return out


def process_names(cluster):
    """The processes (one per host) a run's cluster has, in start order."""
    names = ["coord"] + ["enc%d" % e for e in range(cluster["encoders"])]
    for r in range(cluster["replicas"] + cluster["spare_replicas"]):
        names += ["r%ds%d" % (r, s) for s in range(cluster["stages"])]
    return names


def _check_faults(faults, cluster, path):
    if not isinstance(faults, list):
        raise ScenarioError("%s: must be a list" % path)
    names = set(process_names(cluster))
    replicas = {"r%d" % r for r in range(cluster["replicas"] + cluster["spare_replicas"])}
    out = []
    for i, f in enumerate(faults):
        p = "%s[%d]" % (path, i)
        if not isinstance(f, dict):
            raise ScenarioError("%s: must be a mapping" % p)
        extra = set(f) - {"at", "action", "target", "for", "restart_after", "cpu"}
        if extra:
            raise ScenarioError("%s: unknown key '%s'" % (p, sorted(extra)[0]))
        f = dict(f)
        _num(f.get("at"), p + ".at", 0, 86400)
        if f.get("action") not in FAULT_ACTIONS:
            raise ScenarioError("%s.action: one of %s" % (p, ", ".join(FAULT_ACTIONS)))
        t = f.get("target")
        if f["action"] in ("drain", "undrain"):
            ok = t in replicas or t in names
        elif f["action"] == "add_replica":
            ok = t in replicas
        else:
            ok = t in names
        if not ok:
            raise ScenarioError("%s.target: '%s' is not a %s of this cluster (%s)" % (
                p, t, "replica" if f["action"] == "add_replica" else "process",
                ", ".join(sorted(names | replicas))))
        if "for" in f:
            if f["action"] not in ("stop", "partition", "cpu", "drain"):
                raise ScenarioError("%s.for: only stop, partition, cpu and drain are undone" % p)
            _num(f["for"], p + ".for", 0.01, 86400)
        if "restart_after" in f:
            if f["action"] != "kill":
                raise ScenarioError("%s.restart_after: only with kill" % p)
            _num(f["restart_after"], p + ".restart_after", 0, 86400)
        if f["action"] == "cpu":
            _num(f.get("cpu"), p + ".cpu", 0.01, 64)
        elif "cpu" in f:
            raise ScenarioError("%s.cpu: only with action cpu" % p)
        out.append(f)
    return sorted(out, key=lambda f: f["at"])


def _check_run(run, path):
    h, c, l = run["hosts"], run["cluster"], run["load"]
    for k in ("stage_cpu", "coordinator_cpu", "encoder_cpu"):
        _num(h[k], "%s.hosts.%s" % (path, k), 0.01, 64, none_ok=True)
    if h["bandwidth"] is not None and not (isinstance(h["bandwidth"], str) and
                                           re.fullmatch(r"\d+(k|m|g)?bit", h["bandwidth"])):
        raise ScenarioError("%s.hosts.bandwidth: a rate like '100mbit'" % path)
    _num(c["replicas"], path + ".cluster.replicas", 1, 16, True)
    _num(c["stages"], path + ".cluster.stages", 1, 8, True)
    _num(c["encoders"], path + ".cluster.encoders", 1, 8, True)
    _num(c["spare_replicas"], path + ".cluster.spare_replicas", 0, 8, True)
    _num(c["extra_microbatches"], path + ".cluster.extra_microbatches", 0, 64, True)
    _num(c["heartbeat_timeout_ms"], path + ".cluster.heartbeat_timeout_ms", 100, 600000, True)
    if not isinstance(c["state"], bool):
        raise ScenarioError("%s.cluster.state: true or false" % path)
    if not (isinstance(c["kv_mem"], str) and re.fullmatch(r"\d+(KiB|MiB|GiB)?", c["kv_mem"])):
        raise ScenarioError("%s.cluster.kv_mem: a size like '64MiB'" % path)
    modes = [k for k in ("rate", "rate_per_replica", "concurrency") if l[k] is not None]
    if len(modes) != 1:
        raise ScenarioError("%s.load: exactly one of rate, rate_per_replica, concurrency" % path)
    _num(l["rate"], path + ".load.rate", 1e-4, 1e4, none_ok=True)
    _num(l["rate_per_replica"], path + ".load.rate_per_replica", 1e-4, 1e4, none_ok=True)
    _num(l["concurrency"], path + ".load.concurrency", 1, 1e5, True, none_ok=True)
    _num(l["duration"], path + ".load.duration", 1, 86400)
    _num(l["seed"], path + ".load.seed", 0, 2 ** 53, True)
    _num(l["timeout"], path + ".load.timeout", 1, 86400)
    _num(l["warmup"], path + ".load.warmup", 0, l["duration"])
    if l["transport"] not in ("rpc", "http"):
        raise ScenarioError("%s.load.transport: rpc or http" % path)
    if not isinstance(l["drain"], bool):
        raise ScenarioError("%s.load.drain: true (wait for what is in flight) or false" % path)
    _num(run["threads"], path + ".threads", 1, 64, True)
    run["faults"] = _check_faults(run["faults"], c, path + ".faults")
    if run["load"]["rate_per_replica"] is not None:
        run["load"]["rate"] = run["load"]["rate_per_replica"] * c["replicas"]
    return run


def load(path):
    """The scenario at path, checked, with every run expanded (a list of
    runs, each complete). Raises ScenarioError with the reason."""
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise ScenarioError("%s: %s" % (path, e.strerror))
    except yaml.YAMLError as e:
        raise ScenarioError("%s: not valid YAML: %s" % (path, e))
    return parse(doc, os.path.dirname(os.path.abspath(path)))


def parse(doc, base_dir):
    if not isinstance(doc, dict):
        raise ScenarioError("a scenario is a mapping")
    extra = set(doc) - TOP_KEYS
    if extra:
        raise ScenarioError("unknown key '%s'" % sorted(extra)[0])
    name = doc.get("name")
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name)):
        raise ScenarioError("name: 1..64 of A-Z a-z 0-9 _ . -")
    base = _merge(DEFAULTS, {k: doc[k] for k in ("threads", "hosts", "cluster", "load",
                                                 "faults") if k in doc}, "scenario")
    model = doc.get("model", DEFAULTS["model"])
    if not isinstance(model, dict) or set(model) - {"preset", "seed", "path"}:
        raise ScenarioError("model: {preset: tiny|medium|small, seed: N} or {path: DIR}")
    if "path" in model:
        if not isinstance(model["path"], str) or "preset" in model:
            raise ScenarioError("model.path: a folder (and no preset)")
        base["model"] = {"path": os.path.join(base_dir, model["path"])}
    else:
        if model.get("preset", "medium") not in ("tiny", "medium", "small"):
            raise ScenarioError("model.preset: tiny, medium or small")
        base["model"] = {"preset": model.get("preset", "medium"),
                         "seed": _num(model.get("seed", 1), "model.seed", 0, 2 ** 31, True)}
    if ("workload" in doc) == ("workload_file" in doc):
        raise ScenarioError("exactly one of workload (inline) or workload_file")
    if "workload" in doc:
        wl = doc["workload"]
        if not isinstance(wl, dict) or not isinstance(wl.get("items"), list) or not wl["items"]:
            raise ScenarioError("workload: {items: [...]} (see sa-load --help)")
        wl = copy.deepcopy(wl)
        for i, it in enumerate(wl["items"]):
            if not isinstance(it, dict):
                raise ScenarioError("workload.items[%d]: must be a mapping" % i)
            if isinstance(it.get("clip"), str):
                it["clip"] = os.path.join(base_dir, it["clip"])
        base["workload"] = wl
    else:
        if not isinstance(doc["workload_file"], str):
            raise ScenarioError("workload_file: a path")
        base["workload_file"] = os.path.join(base_dir, doc["workload_file"])

    runs = doc.get("runs")
    matrix = doc.get("matrix")
    if runs is not None and matrix is not None:
        raise ScenarioError("runs and matrix: one or the other")
    out = []
    if matrix is not None:
        if not isinstance(matrix, dict) or not matrix or set(matrix) - MATRIX_KEYS:
            raise ScenarioError("matrix: lists of %s" % ", ".join(sorted(MATRIX_KEYS)))
        keys = sorted(matrix)
        for k in keys:
            if not isinstance(matrix[k], list) or not matrix[k]:
                raise ScenarioError("matrix.%s: a non-empty list" % k)
        for combo in itertools.product(*(matrix[k] for k in keys)):
            over = {"cluster": {}, "load": {}}
            label = []
            for k, v in zip(keys, combo):
                if k == "replicas":
                    over["cluster"]["replicas"] = v
                    label.insert(0, "k%s" % v)
                else:
                    over["load"] = {"rate": None, "rate_per_replica": None, "concurrency": None,
                                    k: v}
                    label.append("%s%s" % ({"rate": "r", "rate_per_replica": "x",
                                            "concurrency": "c"}[k], v))
            run = _merge(base, over, "matrix")
            run["name"] = "-".join(label)
            out.append(run)
    elif runs is not None:
        if not isinstance(runs, list) or not runs:
            raise ScenarioError("runs: a non-empty list")
        for i, r in enumerate(runs):
            if not isinstance(r, dict):
                raise ScenarioError("runs[%d]: must be a mapping" % i)
            run = _merge(base, {k: v for k, v in r.items()}, "runs[%d]" % i, RUN_KEYS)
            if "load" in r and any(k in r["load"] for k in ("rate", "rate_per_replica",
                                                            "concurrency")):
                for k in ("rate", "rate_per_replica", "concurrency"):
                    run["load"][k] = r["load"].get(k)
            out.append(run)
    else:
        out = [dict(base, name=name)]
    seen = set()
    for i, run in enumerate(out):
        rn = run.get("name")
        if not (isinstance(rn, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", rn)):
            raise ScenarioError("runs[%d].name: 1..64 of A-Z a-z 0-9 _ . -" % i)
        if rn in seen:
            raise ScenarioError("runs[%d].name: '%s' twice" % (i, rn))
        seen.add(rn)
        _check_run(run, "runs[%d]" % i if len(out) > 1 else "scenario")
    if matrix is not None:  # checked: by replicas, stable (rates rise within each)
        out.sort(key=lambda r: r["cluster"]["replicas"])
    baseline = doc.get("baseline")
    if baseline is not None and baseline not in seen:
        raise ScenarioError("baseline: '%s' is not a run of this scenario" % baseline)
    return {"name": name, "description": doc.get("description", ""), "runs": out,
            "baseline": baseline, "matrix": matrix is not None}
