"""The discrete-event model of a sa-cluster run (see sim/README.md).

What is modelled, as built (coordinator/request.c, sched.c, pipeline.c):
- requests arrive as the scenario's Poisson process (or closed loop); each is
  encoded on the least busy encoder, prefilled in chunks of at most 128 prompt
  tokens (one chunk per micro-batch), forked into n chains, decoded one token
  per chain per step until max_tokens;
- per replica, stages + extra_microbatches micro-batches are in flight; each
  takes the ready chains split evenly over the free slots (at most max_batch);
- every stage is a FIFO server whose step costs CPU (per-step overhead + per
  token compute, calibrated) on a host with a CPU quota, modelled as CFS does
  it: a budget of quota x period per period, a step that runs out waits for
  the next period;
- the coordinator is one server on its own quota: each returning step costs
  it per-step and per-token CPU before the next micro-batch of that slot goes;
- hops cost a latency and bytes/bandwidth;
- faults: a stage lost at t is noticed after detect_s (0.5 s for a kill, the
  heartbeat timeout for a stop or a partition); its replica's requests re-
  prefill their prompt and tokens so far on another replica; the replica comes
  back at t + for (stop, partition) or never (kill); a killed coordinator
  stops everything for its restart time, then every running request re-prefills.

What is not: KV-cache admission limits (the runs here never fill the pools),
early-consensus stops (the random model's chains run to max_tokens), network
delay variance, memory-bandwidth contention between hosts.
"""
import heapq
import math

M64 = (1 << 64) - 1


def splitmix64(state):
    state[0] = (state[0] + 0x9e3779b97f4a7c15) & M64
    z = state[0]
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


def unit(state):
    return (splitmix64(state) >> 11) * 2.0 ** -53


class Host:
    """CPU time on a cgroup quota: cpu CPUs per period (None: one full core)."""

    def __init__(self, cpu, period=0.010):
        self.cpu, self.period = cpu, period
        self.free_at = 0.0     # the host's single runnable thread is busy until
        self.win = -1          # the period whose budget is tracked
        self.used = 0.0

    def run(self, t, cost):
        """Runs cost CPU-seconds from t (after earlier work); returns the end."""
        t = max(t, self.free_at)
        if not self.cpu or self.cpu >= 1.0:
            self.free_at = t + cost
            return self.free_at
        budget = self.cpu * self.period
        while cost > 1e-12:
            w = int(t / self.period + 1e-9)  # a boundary belongs to the next period
            if w != self.win:
                self.win, self.used = w, 0.0
            left = budget - self.used
            end_of_period = (w + 1) * self.period
            if left <= 1e-12 or end_of_period - t <= 1e-12:
                t = max(t, end_of_period)
                continue
            step = min(cost, left, end_of_period - t)
            t += step
            self.used += step
            cost -= step
        self.free_at = t
        return t


class Cost:
    """The calibrated costs (sim/calibration/*.json), CPU-seconds."""

    def __init__(self, cal):
        self.c = cal

    def stage(self, layers, tokens, ctx_tokens, last):
        c = self.c["stage"]
        t = c["per_step"] + layers * (c["per_layer_step"] + c["per_layer_token"] * tokens +
                                      c["per_layer_ctx_token"] * ctx_tokens)
        if last:
            t += c["head_per_token"] * tokens
        return t

    def coordinator(self, tokens, decode_tokens):
        c = self.c["coordinator"]
        return c["per_step"] + c["per_token"] * tokens + c["per_sampled_token"] * decode_tokens

    def encoder(self, audio_s):
        c = self.c["encoder"]
        return c["per_request"] + c["per_audio_s"] * audio_s


class Req:
    __slots__ = ("i", "t_arrive", "n", "max_tokens", "prompt", "audio_s", "t_first", "t_end",
                 "chains", "prefilled", "prefill_inflight", "replica", "arrivals", "done",
                 "replays")

    def __init__(self, i, t, item):
        self.i, self.t_arrive = i, t
        self.n, self.max_tokens = item["n"], item["max_tokens"]
        self.prompt, self.audio_s = item["prompt_tokens"], item["audio_s"]
        self.t_first = self.t_end = None
        self.chains = [0] * self.n          # tokens so far
        self.prefilled = 0                  # prompt tokens prefilled on its replica
        self.prefill_inflight = False
        self.replica = None
        self.arrivals = []                  # (t, tokens)
        self.done = False
        self.replays = set()                # chains to re-prefill after a move


class Sim:
    def __init__(self, run, cal, items, seed=1):
        self.run, self.cost = run, Cost(cal)
        self.cal = cal
        c = run["cluster"]
        self.P, self.R = c["stages"], c["replicas"]
        self.slots = c["stages"] + c["extra_microbatches"]
        self.max_batch = cal.get("max_batch", 64)
        self.chunk = cal.get("prefill_chunk", 128)
        self.layers = cal["model"]["layers"]
        h = run["hosts"]
        self.coord = Host(h["coordinator_cpu"])
        self.encs = [Host(h["encoder_cpu"]) for _ in range(c["encoders"])]
        self.stages = [[Host(h["stage_cpu"]) for _ in range(self.P)] for _ in range(self.R)]
        self.alive = [True] * self.R
        self.inflight = [0] * self.R
        self.items = items
        self.ev = []
        self.seq = 0
        self.reqs = []
        self.queue = []        # encoded, waiting for a replica
        self.hop = cal["hop"]["latency_s"]
        # KV blocks per stage from --kv-mem: fp32 K and V of the stage's layers
        self.kv = cal["kv"]
        mem = c["kv_mem"]
        mult = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
        num = int(mem.rstrip("KMGiB"))
        mem_b = num * mult.get(mem[len(str(num)):], 1)
        per_block = (self.kv["bytes_per_token_layer"] * self.kv["block_tokens"] *
                     (self.layers // self.P))
        self.kv_blocks = mem_b // per_block
        self.inflight_chains = set()

    def at(self, t, fn, *args):
        self.seq += 1
        heapq.heappush(self.ev, (t, self.seq, fn, args))

    # ------------------------------------------------------------ arrivals
    def arrivals(self):
        """sa-load's own arrival process and mix draw (client/load.c), so a
        simulated run sends the requests the measured one sent, when it did."""
        load = self.run["load"]
        seed = load["seed"]
        w = [it["weight"] for it in self.items]
        tot = sum(w)
        state = [(seed ^ 0xa0761f62) & M64]
        t, i = 0.0, 0
        while load["rate"]:
            if t >= load["duration"]:
                break
            h = [(seed * 0x2545f4914f6cdd1d + i) & M64]
            u, k = unit(h) * tot, 0
            while k < len(w) - 1 and u >= w[k]:
                u -= w[k]
                k += 1
            self.at(t, self.arrive, Req(i, t, self.items[k]))
            i += 1
            t += -math.log(1.0 - unit(state)) / load["rate"]

    def arrive(self, t, r):
        self.reqs.append(r)
        if r.audio_s > 0:
            e = min(self.encs, key=lambda h: h.free_at)
            end = e.run(t + self.hop, self.cost.encoder(r.audio_s))
            self.at(end + self.hop, self.encoded, r)
        else:
            self.encoded(t, r)

    def encoded(self, t, r):
        self.queue.append(r)
        self.schedule(t)

    # ---------------------------------------------------------- scheduling
    def blocks(self, r):
        """KV blocks a request can ever need (the admission rule of
        request.c): the prompt once, each chain's max_tokens, one copied
        partial block per chain."""
        b = self.kv["block_tokens"]
        return -(-r.prompt // b) + r.n * (-(-r.max_tokens // b) + 1)

    def admit(self):
        """Queued requests, in order, to the replica with the most free KV
        blocks that can hold them; the first that fits nowhere waits."""
        live = [k for k in range(self.R) if self.alive[k]]
        used = [0] * self.R
        for r in self.reqs:
            if r.replica is not None and not r.done:
                used[r.replica] += self.blocks(r)
        while self.queue and live:
            r = self.queue[0]
            k = max(live, key=lambda k: self.kv_blocks - used[k])
            if self.kv_blocks - used[k] < self.blocks(r):
                return
            self.queue.pop(0)
            r.replica = k
            r.prefilled = 0
            used[k] += self.blocks(r)

    def schedule(self, t):
        self.admit()
        for k in range(self.R):
            while self.alive[k] and self.inflight[k] < self.slots:
                if not self.dispatch(t, k):
                    break

    def dispatch(self, t, k):
        mine = [r for r in self.reqs if r.replica == k and not r.done]
        ready = [(r, c) for r in mine if r.prefilled >= r.prompt for c in range(r.n)
                 if r.chains[c] < r.max_tokens and (r.i, c) not in self.inflight_chains
                 and c not in r.replays]
        free = self.slots - self.inflight[k]
        share = min(self.max_batch, -(-len(ready) // free)) if ready else 0
        batch = ready[:share]
        # one prefill chunk (or a replay of a moved request's prompt + tokens)
        pre, pre_tokens = None, 0
        for r in mine:
            if r.prefill_inflight:
                continue
            if r.prefilled < r.prompt:
                pre, pre_tokens = r, min(self.chunk, r.prompt - r.prefilled)
                break
            if r.replays:
                pre, pre_tokens = r, 0
                break
        if pre is not None and pre_tokens == 0:  # replay: a chain's prompt + tokens
            c = min(pre.replays)
            pre_tokens = min(self.chunk, pre.prompt + pre.chains[c])
        if not batch and pre is None:
            return False
        ctx = sum(r.prompt + r.chains[c] for r, c in batch)
        tokens = len(batch) + pre_tokens
        for r, c in batch:
            self.inflight_chains.add((r.i, c))
        if pre is not None:
            pre.prefill_inflight = True
        self.inflight[k] += 1
        end = t
        per = self.layers / self.P
        for s, host in enumerate(self.stages[k]):
            end = host.run(end + self.hop, self.cost.stage(per, tokens, ctx, s == self.P - 1))
        self.at(end + self.hop, self.step_done, k, batch, pre, pre_tokens, tokens)
        return True

    def step_done(self, t, k, batch, pre, pre_tokens, tokens):
        if not self.alive[k]:
            return  # its results are dropped (an older epoch)
        self.inflight[k] -= 1
        end = self.coord.run(t, self.cost.coordinator(tokens, len(batch)))
        for r, c in batch:
            self.inflight_chains.discard((r.i, c))
            if r.done or r.replica != k:
                continue
            r.chains[c] += 1
            r.arrivals.append((end, 1))
            if r.t_first is None:
                r.t_first = end
            if all(x >= r.max_tokens for x in r.chains):
                r.done, r.t_end = True, end
        if pre is not None and pre.replica == k:
            pre.prefill_inflight = False
            if pre.prefilled < pre.prompt:
                pre.prefilled += pre_tokens
            elif pre.replays:
                pre.replays.discard(min(pre.replays))  # one chunk per chain (approx.)
        self.at(end, self.schedule)

    # -------------------------------------------------------------- faults
    def lose_replica(self, t, k, back_at=None):
        self.alive[k] = False
        self.inflight[k] = 0
        for r in self.reqs:
            if r.replica == k and not r.done:
                r.replica, r.prefill_inflight = None, False
                r.replays = {c for c in range(r.n) if 0 < r.chains[c] < r.max_tokens}
                self.queue.append(r)
        self.inflight_chains = {x for x in self.inflight_chains
                                if self.reqs_by_i[x[0]].replica is not None}
        if back_at is not None:
            self.at(back_at, self.replica_back, k)
        self.schedule(t)

    def replica_back(self, t, k):
        self.alive[k] = True
        self.stages[k] = [Host(self.run["hosts"]["stage_cpu"]) for _ in range(self.P)]
        self.schedule(t)

    def coordinator_down(self, t, restart_s):
        """Everything stops; at restart every running request re-prefills."""
        for k in range(self.R):
            self.alive[k] = False
        self.at(t + restart_s, self.coordinator_up)

    def coordinator_up(self, t):
        for k in range(self.R):
            self.alive[k] = True
            self.inflight[k] = 0
        self.inflight_chains = set()
        for r in self.reqs:
            if not r.done and r.replica is not None:
                r.replica, r.prefill_inflight = None, False
                r.replays = {c for c in range(r.n) if 0 < r.chains[c] < r.max_tokens}
                self.queue.append(r)
        self.schedule(t)

    def faults(self):
        cal = self.cal["faults"]
        hb = self.run["cluster"]["heartbeat_timeout_ms"] / 1000.0
        for f in self.run["faults"]:
            a, tgt, t = f["action"], f["target"], f["at"]
            if tgt.startswith("r") and "s" in tgt[1:] and a in ("kill", "stop", "partition"):
                k = int(tgt[1:].split("s")[0])
                detect = cal["kill_detect_s"] if a == "kill" else hb
                back = t + f["for"] + cal["rejoin_s"] if "for" in f else None
                self.at(t + detect, self.lose_replica, k, back)
            elif tgt == "coord" and a == "kill":
                self.at(t, self.coordinator_down,
                        f.get("restart_after", 0) + cal["coordinator_start_s"])

    # ----------------------------------------------------------------- run
    def simulate(self):
        self.arrivals()
        self.faults()
        self.reqs_by_i = {}
        horizon = self.run["load"]["duration"] + self.run["load"]["timeout"]
        while self.ev:
            t, _, fn, args = heapq.heappop(self.ev)
            if t > horizon:
                break
            if fn == self.arrive:
                self.reqs_by_i[args[0].i] = args[0]
            fn(t, *args)
        return self.reqs


def summarize(run, reqs):
    """The measured summary's keys (tools/sa-experiment/analyze.py)."""
    lo, hi = run["load"]["warmup"], run["load"]["duration"]
    tokens = sum(c for r in reqs for t, c in r.arrivals if lo <= t < hi)
    done = [r for r in reqs if r.done]
    ans = sum(1 for r in done if lo <= r.t_end < hi)
    itl = []
    for r in reqs:  # per chain: tokens of a request's chains arrive together per step
        ts = [t for t, _ in r.arrivals]
        per = {}
        for t in ts:
            per.setdefault(t, 0)
        steps = sorted(per)
        itl += [b - a for a, b in zip(steps, steps[1:])]

    def pcts(xs):
        xs = sorted(xs)
        if not xs:
            return {"p50": None, "p90": None, "p99": None, "n": 0}
        at = lambda p: xs[max(1, math.ceil(p / 100 * len(xs))) - 1]
        return {"p50": at(50), "p90": at(90), "p99": at(99), "n": len(xs)}

    return {
        "run": run["name"], "replicas": run["cluster"]["replicas"],
        "stages": run["cluster"]["stages"], "rate": run["load"]["rate"],
        "concurrency": run["load"]["concurrency"], "sent": len(reqs),
        "completed": len(done), "tokens_per_s": round(tokens / (hi - lo), 2),
        "answered_per_s": round(ans / (hi - lo), 4),
        "ttft_s": pcts([r.t_first - r.t_arrive for r in done if r.t_first is not None]),
        "itl_s": pcts(itl),
        "e2e_s": pcts([r.t_end - r.t_arrive for r in done]),
    }
