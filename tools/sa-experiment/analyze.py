"""What a run measured, from its raw files (requests.jsonl from sa-load,
faults.jsonl, status.jsonl): throughput over time, latency percentiles,
fault detection and recovery, token identity against a baseline run; and the
plots of each.
"""
import bisect
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

import metrics  # noqa: E402

BIN = 1.0  # seconds per throughput bin


def read_jsonl(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for n, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                print("sa-experiment: %s:%d: not JSON (skipped)" % (path, n + 1))
    return out


def pct(xs, p):
    """Nearest-rank percentile (None when empty)."""
    if not xs:
        return None
    xs = sorted(xs)
    k = max(1, math.ceil(p / 100 * len(xs)))
    return xs[k - 1]


def pcts(xs):
    return {"p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99), "n": len(xs)}


class RunData:
    def __init__(self, folder):
        self.folder = folder
        self.requests = read_jsonl(os.path.join(folder, "requests.jsonl"))
        self.faults = read_jsonl(os.path.join(folder, "faults.jsonl"))
        self.status = read_jsonl(os.path.join(folder, "status.jsonl"))
        with open(os.path.join(folder, "run.json")) as f:
            self.run = json.load(f)
        try:
            with open(os.path.join(folder, "load-summary.json")) as f:
                self.load = json.load(f)
        except (OSError, ValueError):
            self.load = {}
        self.start = self.load.get("start_unix") or self.run.get("load_start_unix", 0)
        self.duration = self.run["load"]["duration"]
        self.warmup = self.run["load"]["warmup"]

    def token_bins(self):
        """Tokens streamed and requests answered per BIN seconds."""
        end = max([self.duration] + [r["end_s"] for r in self.requests])
        n = int(end / BIN) + 1
        tok, ans = [0.0] * n, [0.0] * n
        for r in self.requests:
            for _, t, c in r["arrivals"]:
                tok[min(n - 1, int(t / BIN))] += c / BIN
            if r["status"] == "OK":
                ans[min(n - 1, int(r["end_s"] / BIN))] += 1 / BIN
        return tok, ans

    def steady(self):
        """Tokens/s and answered/s over [warmup, duration): the load is on."""
        lo, hi = self.warmup, self.duration
        tokens = sum(c for r in self.requests for _, t, c in r["arrivals"] if lo <= t < hi)
        gen = sum(r["result"]["tokens_generated"] for r in self.requests
                  if r["status"] == "OK" and lo <= r["end_s"] < hi)
        answered = sum(1 for r in self.requests if r["status"] == "OK" and lo <= r["end_s"] < hi)
        return tokens / (hi - lo), answered / (hi - lo), gen / (hi - lo)

    def cumulative(self, step=0.5):
        """Tokens streamed by time t, every step seconds up to the last arrival."""
        ts = sorted((a[1], a[2]) for r in self.requests for a in r["arrivals"])
        end = ts[-1][0] if ts else 0
        out, k, total = [], 0, 0
        for j in range(int(end / step) + 2):
            while k < len(ts) and ts[k][0] <= j * step:
                total += ts[k][1]
                k += 1
            out.append(total)
        return out

    def behind(self, base, step=0.5):
        """Tokens this run is behind base (the same requests at the same
        times: same seeds) at every step seconds."""
        a, b = self.cumulative(step), base.cumulative(step)
        n = max(len(a), len(b))
        a += [a[-1] if a else 0] * (n - len(a))
        b += [b[-1] if b else 0] * (n - len(b))
        return [y - x for x, y in zip(a, b)]

    def itl(self):
        out = []
        for r in self.requests:
            last = {}
            for chain, t, c in r["arrivals"]:
                if c <= 0:
                    continue
                if chain in last:
                    out += [(t - last[chain]) / c] * c
                last[chain] = t
        return out

    def fault_times(self, base=None):
        """Each fault: its time since the load started, and the measured time
        to detect it (the coordinator's status shows the target unhealthy, or
        for the coordinator itself: answering again) and to recover: with a
        baseline run (the same requests), until the tokens this run is behind
        it are back under a tenth of their peak, or at one token (peak_behind:
        that peak; a run never more than one token behind has nothing to
        catch up, where a tenth of its peak would ask for none); without
        one, until a 3 s mean of tokens/s is back at 80 % of the 10 s before."""
        tok, _ = self.token_bins()
        lag = self.behind(base) if base else None
        out = []
        for f in self.faults:
            t = f["unix"] - self.start
            item = {"t": round(t, 2), "action": f["action"], "target": f["target"],
                    "result": f["result"]}
            if f["action"] in ("kill", "stop", "partition", "restart"):
                item["detect_s"] = self._detect(f)
                # the longest time no token arrived (from the fault to 60 s
                # after); with a baseline, counted only while the baseline's
                # tokens were arriving (a lull in the load is not a stall)
                ts = sorted(a[1] for r in self.requests for a in r["arrivals"]
                            if t <= a[1] <= t + 60)
                if base:
                    bs = sorted(a[1] for r in base.requests for a in r["arrivals"]
                                if t <= a[1] <= t + 60)
                    gaps = [b - (ts[k - 1] if k else t)
                            for b, k in ((b, bisect.bisect_right(ts, b)) for b in bs)]
                else:
                    gaps = [b - a for a, b in zip([t] + ts, ts)]
                item["longest_stall_s"] = round(max(gaps), 2) if gaps else None
                before = tok[max(0, int((t - 10) / BIN)):max(0, int(t / BIN))]
                level = sum(before) / len(before) if before else 0
                item["throughput_before"] = round(level, 1)
                item["recover_s"] = None
                if lag is not None:
                    k0 = int(t / 0.5)
                    peak_k = max(range(k0, len(lag)), key=lambda k: lag[k], default=k0)
                    peak = lag[peak_k] if peak_k < len(lag) else 0
                    item["peak_behind_tokens"] = peak
                    for k in range(peak_k, len(lag)):
                        if lag[k] <= max(0.1 * peak, 1):
                            item["recover_s"] = round(max(0.0, k * 0.5 - t), 2)
                            break
                else:
                    for k in range(int(t / BIN) + 1, len(tok) - 2):
                        if k * BIN >= self.duration:
                            break
                        if level > 0 and sum(tok[k:k + 3]) / 3 >= 0.8 * level:
                            item["recover_s"] = round(k * BIN - t, 2)
                            break
            out.append(item)
        return out

    def _detect(self, f):
        """Seconds from the fault to the first status, asked after it, that
        shows it: the target unhealthy, or (the coordinator) an answer again."""
        t0 = f["unix"]
        for s in self.status:
            if s.get("asked", s["unix"]) < t0 or not s["ok"]:
                continue
            if f["target"] == "coord" or not s.get("workers", {}).get(f["target"], False):
                return round(s["unix"] - t0, 2)
        return None

    def summary(self, base=None):
        reqs = self.requests
        ok = [r for r in reqs if r["status"] == "OK"]
        tps, aps, gps = self.steady()
        ids = [r["id"] for r in reqs]
        return {
            "run": self.run["name"],
            "replicas": self.run["cluster"]["replicas"],
            "stages": self.run["cluster"]["stages"],
            "rate": self.run["load"]["rate"],
            "concurrency": self.run["load"]["concurrency"],
            "sent": self.load.get("sent", len(reqs)),
            "records": len(reqs),
            "completed": len(ok),
            "failed": sum(1 for r in reqs if r["status"] not in ("OK", "CANCELLED")),
            "cancelled": sum(1 for r in reqs if r["status"] == "CANCELLED"),
            "duplicate_ids": len(ids) - len(set(ids)),
            "resumed": sum(1 for r in reqs if r["resumes"]),
            "tokens_per_s": round(tps, 2),
            "generated_tokens_per_s": round(gps, 2),
            "answered_per_s": round(aps, 4),
            "ttft_s": pcts([r["ttft_s"] for r in ok if r["ttft_s"] is not None]),
            # each answered request's TTFT by its index in the load (the same
            # seed sends the same arrivals: sa-sim validate pairs them)
            "ttft_by_request": sorted([r["i"], round(r["ttft_s"], 4)] for r in ok
                                      if r["ttft_s"] is not None and "i" in r),
            "itl_s": pcts(self.itl()),
            "e2e_s": pcts([r["end_s"] - r["submit_s"] for r in ok]),
            "faults": self.fault_times(base),
            "coordinator": self.coordinator_view(),
            "hosts": self.host_view(),
        }

    def host_view(self):
        """Each emulated host's use of its quota over the load (hosts.json):
        CPUs used, the share of CFS periods that throttled it."""
        path = os.path.join(self.folder, "hosts.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            hosts = json.load(f)
        out = {}
        for name, h in sorted(hosts.items()):
            v = {"cpu": h.get("cpu"), "cpu_s": h.get("cpu_s")}
            if h.get("periods"):
                v["throttled_share"] = round(h.get("throttled", 0) / h["periods"], 4)
            out[name] = v
        return out

    def coordinator_view(self):
        """Means over the load of the coordinator's own histograms (the
        metrics scraped before and after it): where a request's time went
        before its first token, from the coordinator's side."""
        scraped = []
        for w in ("start", "end"):
            path = os.path.join(self.folder, "metrics-%s.txt" % w)
            if not os.path.exists(path):
                return None
            with open(path) as f:
                scraped.append(metrics.parse(f.read()))
        d = metrics.delta(*scraped)
        out = {"steps": d["steps"], "step_tokens": d["tokens"], "step_rows": d["step_rows"]}
        out.update({h + "_mean_s": d[h + "_mean_s"] for h in metrics.HISTOGRAMS})
        return out


def same_result(a, b):
    """Two results of the same request (seeds) agree: the same vote, and per
    chain the same token ids (over HTTP, which sends none: the same text).
    A chain the vote cancelled stops wherever its last step was when the
    vote was decided, a point that depends on timing: there one chain's
    tokens must be a prefix of the other's."""
    if a["answer"] != b["answer"] or len(a["chains"]) != len(b["chains"]):
        return False
    for x, y in zip(sorted(a["chains"], key=lambda c: c["chain"]),
                    sorted(b["chains"], key=lambda c: c["chain"])):
        key = "tokens" if "tokens" in x and "tokens" in y else "text"
        p, q = x.get(key), y.get(key)
        if p == q:
            continue
        cut = {"cancelled", "stop"}  # HTTP says "stop" for a cancelled choice
        if key == "tokens":
            cut = {"cancelled"}
        if (x["finish"] in cut or y["finish"] in cut) and \
                (p[:len(q)] == q or q[:len(p)] == p):
            continue
        return False
    return True


def identity(run, base):
    """Requests of run against the same seeds in base (by index i):
    identical (every chain's tokens equal), differing, lost (answered in
    base, not in run), duplicated (an id recorded twice, or a chain with more
    tokens than its request generated)."""
    b = {r["i"]: r for r in base.requests if r["status"] == "OK"}
    out = {"compared": 0, "identical": 0, "differing": 0, "lost": 0, "duplicated": 0,
           "not_in_baseline": 0}
    seen = {}
    for r in run.requests:
        seen[r["i"]] = seen.get(r["i"], 0) + 1
    out["duplicated"] = sum(n - 1 for n in seen.values())
    mine = {r["i"]: r for r in run.requests}
    for i, br in b.items():
        r = mine.get(i)
        if r is None:
            if i < run.load.get("sent", 0):
                out["lost"] += 1
            continue
        if r["status"] != "OK":
            out["lost"] += 1
            continue
        out["compared"] += 1
        if same_result(r["result"], br["result"]):
            out["identical"] += 1
        else:
            out["differing"] += 1
        rt = [c.get("tokens", []) for c in r["result"]["chains"]]
        if sum(len(t) for t in rt) > r["result"]["tokens_generated"]:
            out["duplicated"] += 1
    out["not_in_baseline"] = sum(1 for r in run.requests if r["status"] == "OK" and r["i"] not in b)
    return out


# ------------------------------------------------------------------ plots

def _fault_marks(ax, d):
    for f in d.fault_times():
        ax.axvline(f["t"], color="tab:red", lw=1, ls="--")
        ax.annotate("%s %s" % (f["action"], f["target"]), (f["t"], 1.0),
                    xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                    fontsize=7, color="tab:red")


def _log_x(ax):
    """A log x axis labelled 1, 2, 5 per decade in plain numbers."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: "%g" % v))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def plot_run(d, folder, base=None):
    tok, ans = d.token_bins()
    xs = [k * BIN for k in range(len(tok))]
    if base is not None:
        fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(8, 6.6), sharex=True)
        lag = d.behind(base)
        a3.plot([k * 0.5 for k in range(len(lag))], lag, lw=1.2, color="tab:purple")
        a3.set_ylabel("tokens behind\nthe baseline")
        a3.grid(alpha=0.3)
        _fault_marks(a3, d)
        btok, _ = base.token_bins()
        a1.plot([k * BIN for k in range(len(btok))], btok, lw=0.8, color="0.7",
                label="baseline (same requests)")
    else:
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    a1.plot(xs, tok, lw=1, label="this run")
    a1.set_ylabel("tokens/s")
    if base is not None:
        a1.legend(fontsize=7, loc="lower right")
    a1.axvspan(0, d.warmup, color="0.9", lw=0)
    _fault_marks(a1, d)
    a2.step(xs, [sum(ans[max(0, k - 4):k + 1]) / min(k + 1, 5) for k in range(len(ans))],
            where="post", lw=1, color="tab:green")
    a2.set_ylabel("answered/s (5 s mean)")
    (a3 if base is not None else a2).set_xlabel("seconds since the load started (grey: warm-up)")
    _fault_marks(a2, d)
    load = d.run["load"]
    fig.suptitle("%s: %d replica(s) x %d stages, %s" % (
        d.run["name"], d.run["cluster"]["replicas"], d.run["cluster"]["stages"],
        "rate %.3g/s" % load["rate"] if load["rate"] else "concurrency %d" % load["concurrency"]),
        fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "throughput.png"), dpi=90)
    plt.close(fig)

    ok = [r for r in d.requests if r["status"] == "OK"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, xs, name in ((a1, [r["ttft_s"] for r in ok if r["ttft_s"] is not None], "TTFT"),
                         (a2, d.itl(), "inter-token latency")):
        xs = sorted(x for x in xs if x > 0)
        if xs:
            ax.plot(xs, [(k + 1) / len(xs) for k in range(len(xs))], lw=1.2)
            _log_x(ax)
        ax.set_xlabel(name + " (s, log)")
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
    fig.suptitle(d.run["name"] + ": latency CDFs", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "latency_cdf.png"), dpi=90)
    plt.close(fig)


def plot_scaling(summaries, folder):
    """Goodput against offered rate per replica count; saturation throughput
    and p99 TTFT against replicas."""
    by_k = {}
    for s in summaries:
        by_k.setdefault(s["replicas"], []).append(s)
    # open loop: the offered rate; closed loop (no rate): the concurrency
    closed = all(s["rate"] is None for s in summaries)
    load = lambda s: (s["concurrency"] if closed else s["rate"]) or 0
    unit = "concurrency" if closed else "requests/s"
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.6))
    best = {}
    for k in sorted(by_k):
        ss = sorted(by_k[k], key=load)
        a1.plot([load(s) for s in ss], [s["tokens_per_s"] for s in ss], "o-", label="%d" % k)
        best[k] = max(ss, key=lambda s: s["tokens_per_s"])
    a1.set_xlabel("offered load (%s)" % unit)
    a1.set_ylabel("tokens/s (steady state)")
    a1.legend(title="replicas", fontsize=8)
    a1.grid(alpha=0.3)
    ks = sorted(best)
    one = best[ks[0]]["tokens_per_s"] / ks[0]
    a2.plot(ks, [best[k]["tokens_per_s"] for k in ks], "o-", label="measured")
    a2.plot(ks, [one * k for k in ks], "--", color="0.5", label="linear from %d" % ks[0])
    for k in ks:
        a2.annotate("%.2f" % (best[k]["tokens_per_s"] / (one * k)),
                    (k, best[k]["tokens_per_s"]), textcoords="offset points", xytext=(4, -12),
                    fontsize=8)
    a2.set_xlabel("replicas (2 stages each)")
    a2.set_ylabel("saturation tokens/s")
    a2.set_xticks(ks)
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    for k in ks:
        ss = sorted(by_k[k], key=load)
        a3.plot([load(s) / k for s in ss], [s["ttft_s"]["p99"] or 0 for s in ss], "o-",
                label="%d" % k)
    a3.set_xlabel("offered load per replica (%s)" % unit)
    a3.set_ylabel("TTFT p99 (s)")
    a3.set_yscale("log")
    a3.legend(title="replicas", fontsize=8)
    a3.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "scaling.png"), dpi=90)
    plt.close(fig)
    return {k: {"run": best[k]["run"], "tokens_per_s": best[k]["tokens_per_s"],
                "answered_per_s": best[k]["answered_per_s"],
                "efficiency": round(best[k]["tokens_per_s"] / (one * k), 3)} for k in ks}


def plot_identity(rows, folder):
    names = [r["run"] for r in rows]
    keys = ("identical", "differing", "lost", "duplicated")
    colors = ("tab:green", "tab:orange", "tab:red", "tab:purple")
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows)), 3.4))
    x = range(len(rows))
    w = 0.2
    for j, (k, c) in enumerate(zip(keys, colors)):
        vals = [r["identity"][k] for r in rows]
        bars = ax.bar([i + (j - 1.5) * w for i in x], vals, w, label=k, color=c)
        for b, v in zip(bars, vals):
            ax.annotate(str(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=15, fontsize=8)
    ax.set_ylabel("requests")
    ax.set_title("token identity against the fault-free run (same seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "identity.png"), dpi=90)
    plt.close(fig)
