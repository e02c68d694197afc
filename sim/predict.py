"""sa-sim predict: Step-Audio-R1 on clusters of GPUs (sim/README.md).

Per (stages P, chains n) one replica is simulated in full by the DES of
simcore with the GPU roofline of gpu.py: once past saturation (its capacity)
and once at `load` x that capacity (its latencies and the work it holds in
flight). Replicas share nothing but the coordinator and the encoders, and a
Poisson stream routed over R replicas is R Poisson streams (the router's
choice of the least loaded replica only evens them further), so a cluster of
G GPUs is R = G / P such replicas plus the shared servers, whose load is R
times one replica's: the coordinator's CPU per step and per sampled token
(measured here, sa-sim calibrate) and the encoders' roofline. The shared
server that passes 100 % caps the cluster. The cost of simulating a cluster
is so that of one replica, whatever G: 1,000 GPUs cost what 8 do.

Faults, from the simulated replica at `load`: a host that dies takes its
replicas' requests in flight (Little's law: arrival rate x time in system).
Fail-stop (what vLLM does) fails them; replay (ours) re-prefills their
prompts and tokens on the other replicas after `detect_s`; both lose the
host for `repair_s`, which costs answered requests only if the others lack
the headroom.
"""
import json
import math
import os
import time

import gpu
import simcore


KEYS = {"gpu": str, "efficiency": dict, "network": str, "gpus_per_host": int, "gpus": list,
        "stages": list, "chains": list, "max_batch": int, "prefill_chunk": int,
        "extra_microbatches": int, "workload": dict, "simulate_s": (int, float),
        "warmup_s": (int, float), "load": float, "failures_per_host_per_day": list,
        "repair_s": (int, float), "detect_s": (int, float)}


def check(cfg):
    """A prediction file, checked in full: a clear error, never a default."""
    if not isinstance(cfg, dict):
        raise ValueError("must be a mapping of the keys in sim/predict.yaml")
    for k in cfg:
        if k not in KEYS:
            raise ValueError("unknown key '%s'" % k)
    for k, t in KEYS.items():
        if k not in cfg:
            raise ValueError("'%s' is missing" % k)
        if not isinstance(cfg[k], t) or isinstance(cfg[k], bool):
            raise ValueError("'%s' has the wrong type" % k)
    if cfg["gpu"] not in gpu.GPUS:
        raise ValueError("gpu: '%s' is not one of %s" % (cfg["gpu"], ", ".join(gpu.GPUS)))
    if cfg["network"] not in gpu.LINKS or cfg["network"] == "nvlink":
        raise ValueError("network: one of ib400, eth100, pcie4")
    for k, lo, hi in (("gpus", 1, 1 << 16), ("stages", 1, 64), ("chains", 1, 256),
                      ("failures_per_host_per_day", 1e-6, 1e4)):
        if not cfg[k] or any(isinstance(x, bool) or not isinstance(x, (int, float)) or
                             not lo <= x <= hi for x in cfg[k]):
            raise ValueError("%s: a list of numbers in [%g, %g]" % (k, lo, hi))
    if any(64 % p for p in cfg["stages"]):
        raise ValueError("stages: each must divide the 64 layers")
    for k, lo, hi in (("gpus_per_host", 1, 64), ("max_batch", 1, 4096),
                      ("prefill_chunk", 1, 65536), ("extra_microbatches", 0, 16),
                      ("simulate_s", 1, 86400), ("warmup_s", 0, 86400), ("load", 0.01, 0.99),
                      ("repair_s", 0, 1e6), ("detect_s", 0, 3600)):
        if not lo <= cfg[k] <= hi:
            raise ValueError("%s: %s is outside [%g, %g]" % (k, cfg[k], lo, hi))
    e = cfg["efficiency"]
    for k in ("bw", "flops", "launch_per_layer_s", "mem_frac"):
        if not isinstance(e.get(k), (int, float)) or isinstance(e.get(k), bool) or \
                not 0 <= e[k] <= 1:
            raise ValueError("efficiency.%s: a number in [0, 1]" % k)
    w = cfg["workload"]
    for k, lo, hi in (("audio_s", 0, 1200), ("max_tokens", 1, 1 << 20)):
        if not isinstance(w.get(k), (int, float)) or isinstance(w.get(k), bool) or \
                not lo <= w[k] <= hi:
            raise ValueError("workload.%s: a number in [%g, %g]" % (k, lo, hi))
    if not isinstance(w.get("prompt"), str):
        raise ValueError("workload.prompt: a string")
    ln = w.get("length")
    if not isinstance(ln, dict) or not isinstance(ln.get("median"), (int, float)) or \
            ln["median"] < 1 or not isinstance(ln.get("sigma", 0.5), (int, float)) or \
            not 0 <= ln.get("sigma", 0.5) <= 3:
        raise ValueError("workload.length: {median: >= 1, sigma: in [0, 3]}")
    acc = w.get("accuracy")
    if acc is not None and (not isinstance(acc, (int, float)) or not 0 <= acc <= 1):
        raise ValueError("workload.accuracy: a probability")


def calibration(cfg, cpu):
    e = cfg["efficiency"]
    link = gpu.LINKS[cfg["network"]]
    return {
        "kind": "gpu",
        "gpu": {"type": cfg["gpu"], "bw_eff": e["bw"], "flop_eff": e["flops"],
                "launch_per_layer_s": e["launch_per_layer_s"], "mem_frac": e["mem_frac"]},
        "network": cfg["network"],
        # the stage process's own CPU per step (RPC, protobuf), measured here
        "host_per_step_s": cpu["stage"]["per_step"],
        "model": {"layers": gpu.STEP_AUDIO_R1["layers"]},
        "coordinator": cpu["coordinator"],
        # coordinator <-> stage: the network plus ZeroMQ/CurveZMQ (assumed 100 us)
        "hop": {"latency_s": link["latency"] + 100e-6},
        "kv": {"block_tokens": 16},
        "max_batch": cfg["max_batch"], "prefill_chunk": cfg["prefill_chunk"],
        "faults": {"kill_detect_s": 0.5, "rejoin_s": 1.0, "coordinator_start_s": 0.75},
    }


def item(cfg, n):
    w = cfg["workload"]
    return {"n": n, "max_tokens": w["max_tokens"], "audio_s": w["audio_s"],
            "prompt_tokens": simcore.prompt_tokens(w["audio_s"], w["prompt"]), "weight": 1,
            "length": w.get("length"), "accuracy": w.get("accuracy")}


def one_replica(cfg, cal, P, n, rate):
    run = {"name": "P%d-n%d" % (P, n),
           "cluster": {"stages": P, "replicas": 1, "extra_microbatches": cfg["extra_microbatches"],
                       "encoders": 1, "kv_mem": "0", "heartbeat_timeout_ms": 5000},
           "hosts": {"stage_cpu": None, "coordinator_cpu": None, "encoder_cpu": None},
           "load": {"rate": rate, "concurrency": None, "warmup": cfg["warmup_s"],
                    "duration": cfg["warmup_s"] + cfg["simulate_s"], "timeout": 0, "seed": 1,
                    "drain": True},
           "faults": []}
    sim = simcore.Sim(run, cal, [item(cfg, n)])
    t0 = time.time()
    reqs = sim.simulate()
    s = simcore.summarize(run, reqs)
    win = cfg["simulate_s"]
    lo = cfg["warmup_s"]
    samp = [x for x in sim.samples if x["t"] >= lo]
    mean = lambda k: sum(x[k] for x in samp) / max(1, len(samp))
    busy = sim.cost.busy
    tot = sum(busy.values()) or 1.0
    gen = sum(c for r in reqs for _, t, c in r.arrivals if lo <= t < lo + win)
    chain_tokens = [sum(r.chains) for r in reqs if r.done and lo <= r.t_end < lo + win]
    return {
        "rate": rate, "tokens_per_s": gen / win, "answered_per_s": s["answered_per_s"],
        "ttft_s": s["ttft_s"], "itl_s": s["itl_s"], "e2e_s": s["e2e_s"],
        "steps_per_s": sim.steps / win, "rows_per_step": sim.step_rows / max(1, sim.steps),
        "coordinator_busy": sim.coord_busy / win,
        "in_flight_requests": mean("requests"), "in_flight_tokens": mean("tokens"),
        "replay_tokens": mean("replay_tokens"), "queued": mean("queued"),
        "refused": sim.rejected, "kv_blocks": sim.kv_blocks,
        "chain_tokens_per_request": sum(chain_tokens) / max(1, len(chain_tokens)),
        "stage_time": {k: v / tot for k, v in busy.items()},
        "wall_s": time.time() - t0,
    }


def bound(cfg, cal, P):
    """Replica tokens/s no schedule can beat: every stage at its FLOP peak x
    efficiency (each token is 2 x parameters / P FLOPs a stage)."""
    m = gpu.Model()
    g = gpu.GPUS[cfg["gpu"]]
    per_token = 2 * (m.layer_params * 64 + m.head_params) / P
    return g["flops"] * cfg["efficiency"]["flops"] / per_token


def per_replica(cfg, cal, say):
    out = {}
    mean_len = cfg["workload"]["length"]["median"] * math.exp(
        cfg["workload"]["length"].get("sigma", 0.5) ** 2 / 2)
    for P in cfg["stages"]:
        for n in cfg["chains"]:
            over = 1.5 * bound(cfg, cal, P) / (n * mean_len)  # requests/s past any capacity
            sat = one_replica(cfg, cal, P, n, over)
            point = None
            if sat["answered_per_s"] > 0:
                point = one_replica(cfg, cal, P, n, cfg["load"] * sat["answered_per_s"])
            out["P%d-n%d" % (P, n)] = {"stages": P, "chains": n, "saturated": sat, "at_load": point}
            say("P=%d n=%-2d: %7.0f tokens/s %6.3f answered/s a replica (%.0f rows a step, "
                "%s); at %.0f %%: TTFT p50 %s s, ITL p50 %s s  [%.0f s]" % (
                    P, n, sat["tokens_per_s"], sat["answered_per_s"], sat["rows_per_step"],
                    "refused: KV cannot hold one request" if sat["refused"] and
                    not sat["answered_per_s"] else "KV %d blocks" % sat["kv_blocks"],
                    cfg["load"] * 100, fmt(point and point["ttft_s"]["p50"]),
                    fmt(point and point["itl_s"]["p50"]),
                    sat["wall_s"] + (point["wall_s"] if point else 0)))
    return out


def fmt(x, f="%.3f"):
    return f % x if x is not None else "-"


def cluster(cfg, cal, rep):
    """Each G: R replicas of one, the shared servers' load, the cap, the
    bottleneck, the fault model."""
    cpu_core = 1.0  # the coordinator is one libuv thread: one core
    enc_cost = gpu.GpuCost(cal).encoder(cfg["workload"]["audio_s"])
    rows = []
    for key, r in rep.items():
        P, n = r["stages"], r["chains"]
        sat, pt = r["saturated"], r["at_load"]
        for G in cfg["gpus"]:
            R = G // P
            if R == 0 or sat["answered_per_s"] == 0:
                continue
            encoders = max(1, G // 64)
            coord = R * sat["coordinator_busy"] / cpu_core
            enc = R * sat["answered_per_s"] * enc_cost / encoders
            cap = max(1.0, coord, enc)
            st = sat["stage_time"]
            if coord > 1:
                neck = "coordinator"
            elif enc > 1:
                neck = "encoder"
            elif sat["queued"] > 0 and sat["rows_per_step"] < 0.9 * cfg["max_batch"] and \
                    sat["in_flight_requests"] > 0:
                neck = "KV capacity" if st["flops"] < 0.5 else "compute"
            else:
                neck = "HBM" if st["hbm"] >= st["flops"] else "compute"
            row = {"gpus": G, "stages": P, "chains": n, "replicas": R,
                   "tokens_per_s": R * sat["tokens_per_s"] / cap,
                   "answered_per_s": R * sat["answered_per_s"] / cap,
                   "coordinator_util": coord, "encoder_util": enc, "encoders": encoders,
                   "coordinator_steps_per_s": R * sat["steps_per_s"],
                   "coordinator_sustains_steps_per_s":
                       sat["steps_per_s"] / sat["coordinator_busy"] if sat["coordinator_busy"] else None,
                   "bottleneck": neck}
            if pt:
                row.update({"ttft_p50": pt["ttft_s"]["p50"], "ttft_p99": pt["ttft_s"]["p99"],
                            "itl_p50": pt["itl_s"]["p50"], "itl_p99": pt["itl_s"]["p99"]})
                row["goodput"] = faults(cfg, G, P, R, pt)
            rows.append(row)
    return rows


def faults(cfg, G, P, R, pt):
    """Answered requests kept (fraction of the fault-free) per failure rate."""
    per_host = max(1, min(R, cfg["gpus_per_host"] // P))
    hosts = max(1, R // per_host)
    out = []
    for f in cfg["failures_per_host_per_day"]:
        lam = f / 86400.0 * hosts                          # host failures a second, cluster
        down = min(1.0, f / 86400.0 * cfg["repair_s"])     # fraction of hosts being repaired
        # the load the others carry while hosts are out: lost only past capacity
        left = 1.0 - down
        cap_loss = max(0.0, 1.0 - left / cfg["load"]) if hosts > 1 else down
        lost_req = lam * per_host * pt["in_flight_requests"]   # requests failed a second
        answered = R * pt["rate"]  # in a steady state, what arrives is answered
        fail_stop = 1.0 - cap_loss - lost_req / answered
        # replay: nothing fails; the re-prefill costs capacity (prefill tokens ~
        # decode tokens in FLOPs at these batches) and only matters past capacity
        extra = lam * per_host * pt["replay_tokens"] / (R * pt["tokens_per_s"])
        replay = 1.0 - cap_loss - max(0.0, extra - (1 - cfg["load"]))
        out.append({"failures_per_host_per_day": f, "replay": replay, "fail_stop": fail_stop,
                    "requests_failed_per_hour_fail_stop": lost_req * 3600,
                    "replay_tokens_per_failure": per_host * pt["replay_tokens"]})
    return out


def plots(cfg, rows, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ns = cfg["chains"]
    fig, axes = plt.subplots(2, len(ns), figsize=(4.2 * len(ns), 7.5), squeeze=False)
    for j, n in enumerate(ns):
        for P in cfg["stages"]:
            rs = sorted((r for r in rows if r["chains"] == n and r["stages"] == P),
                        key=lambda r: r["gpus"])
            if not rs:
                continue
            axes[0][j].plot([r["gpus"] for r in rs], [r["tokens_per_s"] for r in rs], "o-",
                            label="%d stage%s" % (P, "s" if P > 1 else ""))
            axes[1][j].plot([r["gpus"] for r in rs], [r["answered_per_s"] for r in rs], "o-",
                            label="%d stage%s" % (P, "s" if P > 1 else ""))
        for i, what in enumerate(("generated tokens/s", "answered requests/s")):
            ax = axes[i][j]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("H100 GPUs" if cfg["gpu"] == "H100" else cfg["gpu"] + " GPUs")
            ax.set_ylabel(what)
            ax.set_title("n = %d chain%s" % (n, "s" if n > 1 else ""), fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    fig.suptitle("Step-Audio-R1 (33B bf16) on %s: predicted throughput at saturation" % cfg["gpu"],
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "throughput.png"), dpi=110)
    plt.close(fig)

    # goodput vs failure rate, the largest cluster, each P, n = 8
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    G = max(cfg["gpus"])
    for P in cfg["stages"]:
        r = next((r for r in rows if r["gpus"] == G and r["stages"] == P and r["chains"] == 8
                  and r.get("goodput")), None)
        if not r:
            continue
        f = [g["failures_per_host_per_day"] for g in r["goodput"]]
        line, = ax.plot(f, [100 * g["replay"] for g in r["goodput"]], "o-",
                        label="P=%d replay" % P)
        ax.plot(f, [100 * g["fail_stop"] for g in r["goodput"]], "x--", color=line.get_color(),
                label="P=%d fail-stop" % P)
    ax.set_xscale("log")
    ax.set_xlabel("host failures per host per day")
    ax.set_ylabel("answered requests kept (% of fault-free)")
    ax.set_title("%d %s, n = 8, %.0f %% load: replay vs fail-stop" % (G, cfg["gpu"],
                                                                       100 * cfg["load"]),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "goodput.png"), dpi=110)
    plt.close(fig)

    # the coordinator: steps/s needed against what it sustains
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for n in ns:
        for P in cfg["stages"]:
            rs = sorted((r for r in rows if r["chains"] == n and r["stages"] == P),
                        key=lambda r: r["gpus"])
            if rs:
                ax.plot([r["gpus"] for r in rs], [100 * r["coordinator_util"] for r in rs],
                        "o-" if n == 8 else ".:", label="P=%d n=%d" % (P, n))
    ax.axhline(100, color="k", lw=1)
    ax.text(4, 110, "one coordinator core saturated", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("GPUs")
    ax.set_ylabel("coordinator CPU needed at saturation (% of a core)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "coordinator.png"), dpi=110)
    plt.close(fig)


def tables(cfg, rows, rep):
    """Markdown tables for sim/results/predict/README.md."""
    L = ["# Predictions: Step-Audio-R1 (33B, bf16) on %s" % cfg["gpu"], "",
         "Made by `sim/sa-sim predict` from `sim/predict.yaml` (see sim/README.md for the model "
         "and its assumptions). Throughput at saturation; latencies at %.0f %% of it." %
         (100 * cfg["load"]), ""]
    for n in cfg["chains"]:
        L += ["## n = %d" % n, "",
              "| GPUs | stages | replicas | tokens/s | answered/s | TTFT p50 / p99 (s) | "
              "ITL p50 / p99 (s) | coordinator | bottleneck |",
              "|---:|---:|---:|---:|---:|---|---|---:|---|"]
        for r in sorted((r for r in rows if r["chains"] == n),
                        key=lambda r: (r["gpus"], r["stages"])):
            L.append("| %d | %d | %d | %.0f | %.2f | %s / %s | %s / %s | %.0f %% | %s |" % (
                r["gpus"], r["stages"], r["replicas"], r["tokens_per_s"], r["answered_per_s"],
                fmt(r.get("ttft_p50"), "%.2f"), fmt(r.get("ttft_p99"), "%.2f"),
                fmt(r.get("itl_p50")), fmt(r.get("itl_p99")), 100 * r["coordinator_util"],
                r["bottleneck"]))
        none = [k for k, v in rep.items() if v["chains"] == n and
                not v["saturated"]["answered_per_s"]]
        if none:
            L += ["", "Not servable (no request fits the KV cache of one replica, every one is "
                  "refused): " + ", ".join("%d stage(s)" % rep[k]["stages"] for k in none) + "."]
        L.append("")
    G = max(cfg["gpus"])
    L += ["## Goodput under host failures (%d GPUs, %.0f %% load)" % (G, 100 * cfg["load"]), "",
          "Answered requests kept, %% of the fault-free run. Fail-stop fails the requests in "
          "flight on a failed host; replay re-prefills them elsewhere after %.0f s. A failed "
          "host is out for %.0f s." % (cfg["detect_s"], cfg["repair_s"]), "",
          "| stages | n | " + " | ".join("%g/day replay | fail-stop" % f
                                          for f in cfg["failures_per_host_per_day"]) + " |",
          "|---:|---:|" + "---:|---:|" * len(cfg["failures_per_host_per_day"])]
    for r in sorted((r for r in rows if r["gpus"] == G and r.get("goodput")),
                    key=lambda r: (r["chains"], r["stages"])):
        L.append("| %d | %d | " % (r["stages"], r["chains"]) + " | ".join(
            "%.2f %% | %.2f %%" % (100 * g["replay"], 100 * g["fail_stop"]) for g in r["goodput"])
            + " |")
    return "\n".join(L) + "\n"


def predict(cfg, cpu, out, say):
    cal = calibration(cfg, cpu)
    t0 = time.time()
    rep = per_replica(cfg, cal, say)
    rows = cluster(cfg, cal, rep)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "predictions.json"), "w") as f:
        json.dump({"config": cfg, "calibration": cal, "per_replica": rep, "clusters": rows}, f,
                  indent=1)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(tables(cfg, rows, rep))
    plots(cfg, rows, out)
    say("wrote %s (%.0f s)" % (out, time.time() - t0))
    return rows
