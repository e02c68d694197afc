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
        "repair_s": (int, float), "detect_s": (int, float), "admission": list}


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
        kind = (int, float) if k == "failures_per_host_per_day" else int
        if not cfg[k] or any(isinstance(x, bool) or not isinstance(x, kind) or
                             not lo <= x <= hi for x in cfg[k]):
            raise ValueError("%s: a list of %s in [%g, %g]" % (
                k, "numbers" if kind != int else "integers", lo, hi))
    if any(64 % p for p in cfg["stages"]):
        raise ValueError("stages: each must divide the 64 layers")
    for k, lo, hi in (("gpus_per_host", 1, 64), ("max_batch", 1, 4096),
                      ("prefill_chunk", 1, 65536), ("extra_microbatches", 0, 16),
                      ("simulate_s", 1, 86400), ("warmup_s", 0, 86400), ("load", 0.01, 0.99),
                      ("repair_s", 0, 1e6), ("detect_s", 0, 3600)):
        if not lo <= cfg[k] <= hi:
            raise ValueError("%s: %s is outside [%g, %g]" % (k, cfg[k], lo, hi))
    if not cfg["admission"] or any(x not in ("max_tokens", "length") for x in cfg["admission"]):
        raise ValueError("admission: a list of max_tokens (as built) and length (what-if)")
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
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if not isinstance(ln, dict) or set(ln) - {"median", "sigma"} or \
            not num(ln.get("median")) or not 1 <= ln["median"] <= 1 << 20 or \
            not num(ln.get("sigma", 0.5)) or not 0 <= ln.get("sigma", 0.5) <= 3:
        raise ValueError("workload.length: {median: in [1, 2^20], sigma: in [0, 3]}")
    if set(w) - {"audio_s", "prompt", "max_tokens", "length", "accuracy"}:
        raise ValueError("workload: unknown key '%s'" % sorted(
            set(w) - {"audio_s", "prompt", "max_tokens", "length", "accuracy"})[0])
    if not isinstance(w["max_tokens"], int):
        raise ValueError("workload.max_tokens: an integer")
    acc = w.get("accuracy")
    if acc is not None and (not isinstance(acc, (int, float)) or not 0 <= acc <= 1):
        raise ValueError("workload.accuracy: a probability")


def calibration(cfg, cpu, coord):
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
        # the coordinator's CPU per step and per row when it is saturated
        # (sa-sim coordinator), this machine's core
        "coordinator": {"per_step": coord["per_step"], "per_token": coord["per_row"],
                        "per_sampled_token": 0.0},
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


def one_replica(cfg, cal, P, n, rate, reserve):
    run = {"name": "P%d-n%d" % (P, n),
           "cluster": {"stages": P, "replicas": 1, "extra_microbatches": cfg["extra_microbatches"],
                       "encoders": 1, "kv_mem": "0", "heartbeat_timeout_ms": 5000,
                       "reserve": reserve},
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


def bound(cfg, P):
    """Replica tokens/s no schedule can beat: every stage at its FLOP peak x
    efficiency (each token is 2 x parameters / P FLOPs a stage)."""
    m = gpu.Model()
    g = gpu.GPUS[cfg["gpu"]]
    per_token = 2 * (m.layer_params * 64 + m.head_params) / P
    return g["flops"] * cfg["efficiency"]["flops"] / per_token


def per_replica(cfg, cal, say, reserve):
    out = {}
    mean_len = cfg["workload"]["length"]["median"] * math.exp(
        cfg["workload"]["length"].get("sigma", 0.5) ** 2 / 2)
    for P in cfg["stages"]:
        for n in cfg["chains"]:
            over = 1.5 * bound(cfg, P) / (n * mean_len)  # requests/s past any capacity
            sat = one_replica(cfg, cal, P, n, over, reserve)
            point = None
            if sat["answered_per_s"] > 0:
                point = one_replica(cfg, cal, P, n, cfg["load"] * sat["answered_per_s"], reserve)
            out["P%d-n%d" % (P, n)] = {"stages": P, "chains": n, "saturated": sat, "at_load": point}
            say("%s P=%d n=%-2d: %7.0f tokens/s %6.3f answered/s a replica (%.0f rows a step, "
                "%s); at %.0f %%: TTFT p50 %s s, ITL p50 %s s  [%.0f s]" % (
                    reserve, P, n, sat["tokens_per_s"], sat["answered_per_s"], sat["rows_per_step"],
                    "refused: KV cannot hold one request" if sat["refused"] and
                    not sat["answered_per_s"] else "KV %d blocks" % sat["kv_blocks"],
                    cfg["load"] * 100, fmt(point and point["ttft_s"]["p50"]),
                    fmt(point and point["itl_s"]["p50"]),
                    sat["wall_s"] + (point["wall_s"] if point else 0)))
    return out


def fmt(x, f="%.3f"):
    return f % x if x is not None else "-"


def cluster(cfg, cal, rep, admission):
    """Each G: R replicas of one, the shared servers' load, the cap, the
    bottleneck, the fault model. Latencies: the simulated replica's at
    `load`, plus the wait at the shared coordinator (M/D/1 at its cluster
    utilisation: each token passes it once a step)."""
    enc_cost = gpu.GpuCost(cal).encoder(cfg["workload"]["audio_s"])
    chunks = 1 + math.ceil(simcore.prompt_tokens(cfg["workload"]["audio_s"],
                                                 cfg["workload"]["prompt"]) / cfg["prefill_chunk"])
    rows = []
    for r in rep.values():
        P, n = r["stages"], r["chains"]
        sat, pt = r["saturated"], r["at_load"]
        for G in cfg["gpus"]:
            R = G // P
            if R == 0 or sat["answered_per_s"] == 0:
                continue
            encoders = max(1, G // 64)
            coord = R * sat["coordinator_busy"]  # one libuv thread: one core
            enc = R * sat["answered_per_s"] * enc_cost / encoders
            cap = max(1.0, coord, enc)
            st = sat["stage_time"]
            if coord > 1:
                neck = "coordinator"
            elif enc > 1:
                neck = "encoder"
            elif sat["rows_per_step"] < 0.9 * cfg["max_batch"]:
                neck = "KV capacity"  # the batch is what the KV admission lets in
            else:
                neck = "HBM" if st["hbm"] >= st["flops"] else "compute"
            row = {"admission": admission, "gpus": G, "stages": P, "chains": n, "replicas": R,
                   "tokens_per_s": R * sat["tokens_per_s"] / cap,
                   "answered_per_s": R * sat["answered_per_s"] / cap,
                   "coordinator_util": coord, "encoder_util": enc, "encoders": encoders,
                   "coordinator_steps_per_s": R * sat["steps_per_s"] / cap,
                   "coordinator_sustains_steps_per_s":
                       sat["steps_per_s"] / sat["coordinator_busy"] if sat["coordinator_busy"]
                       else None,
                   "rows_per_step": sat["rows_per_step"], "bottleneck": neck}
            if pt:
                rho = min(0.99, R * pt["coordinator_busy"] / cap)
                svc = pt["coordinator_busy"] / max(1e-9, pt["steps_per_s"])
                wait = rho * svc / (2 * (1 - rho))
                row.update({"ttft_p50": pt["ttft_s"]["p50"] + chunks * wait,
                            "ttft_p99": pt["ttft_s"]["p99"] + chunks * wait,
                            "itl_p50": pt["itl_s"]["p50"] + wait,
                            "itl_p99": pt["itl_s"]["p99"] + wait,
                            "coordinator_util_at_load": rho, "coordinator_wait_s": wait})
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


ADMISSION = {"max_tokens": "as built: each chain reserves max_tokens of KV",
             "length": "what-if: each chain reserves the KV it will use"}


def plots(cfg, rows, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ns, gpu_name = cfg["chains"], cfg["gpu"] + " GPUs"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    style = {"max_tokens": "o-", "length": "s--"}

    def lines(ax, key, n, label=True):
        for i, P in enumerate(cfg["stages"]):
            for adm in cfg["admission"]:
                rs = sorted((r for r in rows if r["chains"] == n and r["stages"] == P and
                             r["admission"] == adm), key=lambda r: r["gpus"])
                if rs:
                    ax.plot([r["gpus"] for r in rs], [key(r) for r in rs], style[adm],
                            color=colors[i % len(colors)], ms=4,
                            label=("P=%d%s" % (P, "" if adm == "max_tokens" else " what-if"))
                            if label else None)

    fig, axes = plt.subplots(2, len(ns), figsize=(4.4 * len(ns), 8), squeeze=False)
    for j, n in enumerate(ns):
        lines(axes[0][j], lambda r: r["tokens_per_s"], n)
        lines(axes[1][j], lambda r: r["answered_per_s"], n, label=False)
        for i, what in enumerate(("generated tokens/s", "answered requests/s")):
            ax = axes[i][j]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(gpu_name)
            ax.set_ylabel(what)
            ax.set_title("n = %d chain%s" % (n, "s" if n > 1 else ""), fontsize=10)
            ax.grid(alpha=0.3, which="both")
        axes[0][j].legend(fontsize=7, ncol=2)
    fig.suptitle("Step-Audio-R1 (33B bf16) on %s, at saturation\nsolid: %s; dashed: %s" % (
        gpu_name, ADMISSION["max_tokens"], ADMISSION["length"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "throughput.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    G = max(cfg["gpus"])
    for i, P in enumerate(cfg["stages"]):
        r = next((r for r in rows if r["gpus"] == G and r["stages"] == P and r["chains"] == 8
                  and r["admission"] == "max_tokens" and r.get("goodput")), None)
        if not r:
            continue
        f = [g["failures_per_host_per_day"] for g in r["goodput"]]
        ax.plot(f, [100 * g["replay"] for g in r["goodput"]], "o-", color=colors[i],
                label="P=%d replay" % P)
        ax.plot(f, [100 * g["fail_stop"] for g in r["goodput"]], "x--", color=colors[i],
                label="P=%d fail-stop" % P)
    ax.text(0.02, 0.93, "replay (solid): no request fails, every P at 100 %; the re-prefill "
            "fits in the 30 % headroom", transform=ax.transAxes, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("host failures per host per day")
    ax.set_ylabel("answered requests kept (% of fault-free)")
    ax.set_title("%d %s, n = 8, %.0f %% load, as built: replay vs fail-stop" % (
        G, gpu_name, 100 * cfg["load"]), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "goodput.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    lines(ax, lambda r: 100 * r["coordinator_util"], 8)
    ax.axhline(100, color="k", lw=1)
    ax.text(min(cfg["gpus"]), 115, "one coordinator core saturated", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(gpu_name)
    ax.set_ylabel("coordinator CPU the replicas ask at saturation (% of a core)")
    ax.set_title("n = 8: the coordinator's load (past 100 % it caps the cluster)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "coordinator.png"), dpi=110)
    plt.close(fig)


def tables(cfg, rows, rep):
    """Markdown tables for sim/results/predict/README.md."""
    L = ["# Predictions: Step-Audio-R1 (33B, bf16) on %s" % cfg["gpu"], "",
         "Made by `sim/sa-sim predict` from `sim/predict.yaml`; the model, its assumptions and "
         "what these tables say are in sim/README.md. Throughput at saturation; latencies at "
         "%.0f %% of it (the replica's, plus the wait at the shared coordinator)." %
         (100 * cfg["load"]), ""]
    for adm in cfg["admission"]:
        L += ["## %s" % ADMISSION[adm][0].upper() + ADMISSION[adm][1:], ""]
        for n in cfg["chains"]:
            L += ["### n = %d" % n, "",
                  "| GPUs | stages | replicas | tokens/s | answered/s | rows/step | "
                  "TTFT p50 / p99 (s) | ITL p50 / p99 (s) | coordinator | bottleneck |",
                  "|---:|---:|---:|---:|---:|---:|---|---|---:|---|"]
            for r in sorted((r for r in rows if r["chains"] == n and r["admission"] == adm),
                            key=lambda r: (r["gpus"], r["stages"])):
                L.append("| %d | %d | %d | %.0f | %.2f | %.0f | %s / %s | %s / %s | %.0f %% | %s |"
                         % (r["gpus"], r["stages"], r["replicas"], r["tokens_per_s"],
                            r["answered_per_s"], r["rows_per_step"],
                            fmt(r.get("ttft_p50"), "%.2f"), fmt(r.get("ttft_p99"), "%.2f"),
                            fmt(r.get("itl_p50")), fmt(r.get("itl_p99")),
                            100 * r["coordinator_util"], r["bottleneck"]))
            none = [v["stages"] for v in rep[adm].values() if v["chains"] == n and
                    not v["saturated"]["answered_per_s"]]
            if none:
                L += ["", "Not servable with %s stage(s): one request needs more KV than a "
                      "replica holds; every one is refused." % ", ".join(map(str, none))]
            L.append("")
    G = max(cfg["gpus"])
    fs = cfg["failures_per_host_per_day"]
    L += ["## Goodput under host failures (%d GPUs, %.0f %% load, as built)" % (
        G, 100 * cfg["load"]), "",
          "Answered requests kept, %% of the fault-free run. Fail-stop fails the requests in "
          "flight on a failed host; replay re-prefills them elsewhere after %.0f s. A failed "
          "host is out for %.0f s." % (cfg["detect_s"], cfg["repair_s"]), "",
          "| stages | n | " + " | ".join("%g/day: replay | fail-stop" % f for f in fs) + " |",
          "|---:|---:|" + "---:|---:|" * len(fs)]
    for r in sorted((r for r in rows if r["gpus"] == G and r.get("goodput") and
                     r["admission"] == "max_tokens"), key=lambda r: (r["chains"], r["stages"])):
        L.append("| %d | %d | " % (r["stages"], r["chains"]) + " | ".join(
            "%.2f %% | %.2f %%" % (100 * g["replay"], 100 * g["fail_stop"]) for g in r["goodput"])
            + " |")
    L += ["", "## The coordinator at %d GPUs" % G, "",
          "| admission | stages | n | steps/s asked | rows/step | steps/s one core sustains "
          "at those rows | CPU asked |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted((r for r in rows if r["gpus"] == G), key=lambda r: (
            r["admission"], r["chains"], r["stages"])):
        L.append("| %s | %d | %d | %.0f | %.0f | %s | %.0f %% |" % (
            r["admission"], r["stages"], r["chains"], r["coordinator_steps_per_s"] *
            max(1.0, r["coordinator_util"]), r["rows_per_step"],
            fmt(r["coordinator_sustains_steps_per_s"], "%.0f"), 100 * r["coordinator_util"]))
    return "\n".join(L) + "\n"


def predict(cfg, cpu, coord, out, say):
    cal = calibration(cfg, cpu, coord)
    t0 = time.time()
    rep, rows = {}, []
    for admission in cfg["admission"]:
        rep[admission] = per_replica(cfg, cal, say, admission)
        rows += cluster(cfg, cal, rep[admission], admission)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "predictions.json"), "w") as f:
        json.dump({"config": cfg, "calibration": cal, "per_replica": rep, "clusters": rows}, f,
                  indent=1)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(tables(cfg, rows, rep))
    plots(cfg, rows, out)
    say("wrote %s (%.0f s)" % (out, time.time() - t0))
    return rows


def replot(out, say):
    """Tables and plots again from predictions.json (no simulation)."""
    with open(os.path.join(out, "predictions.json")) as f:
        d = json.load(f)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(tables(d["config"], d["clusters"], d["per_replica"]))
    plots(d["config"], d["clusters"], out)
    say("wrote the tables and plots of %s" % out)
