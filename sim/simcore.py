"""The discrete-event model of a sa-cluster run (see sim/README.md).

What is modelled, as built (coordinator/request.c, sched.c, pipeline.c):
- requests arrive as the scenario's Poisson process (or closed loop); each is
  encoded on the least busy encoder, prefilled in chunks of at most 128 prompt
  tokens (one chunk per micro-batch), forked into n chains (Stage/Fork on
  every stage, queued behind the steps there), decoded one token per chain
  per step until max_tokens, each chain's sequence freed on every stage
  (Stage/Free, queued alike);
- per replica, stages + extra_microbatches micro-batches are in flight; each
  takes its even share of the ready sequences over the free slots (at most
  max_batch; a request to prefill counts one), decode steps first, a prefill
  chunk only if the share leaves room (sched.c's plan);
- every stage is a FIFO server whose step costs CPU (per-step overhead + the
  measured whole-model step at its batch and context, its share of the
  layers) on a host with a CPU quota, modelled as this kernel's CFS does it
  (measured): a budget of quota x period per period, charged at scheduler
  ticks, the overrun paid from the next period (Host);
- the coordinator is one server on its own quota: each returning step costs
  it per-step and per-token CPU before the next micro-batch of that slot goes,
  each arriving request its own CPU;
- hops cost a latency and bytes/bandwidth;
- faults: a stage lost at t is noticed after detect_s (0.5 s for a kill, the
  heartbeat timeout for a stop or a partition); its replica's requests re-
  prefill their prompt and tokens so far on another replica; the replica comes
  back at t + for (stop, partition) or never (kill); a killed coordinator
  stops everything for its restart time, then every running request re-prefills;
  a killed encoder leaves the pool when noticed (kill_detect_s) and the
  encodings it had not answered go to another; a drained replica admits
  nothing new; an added replica (a spare) serves from t + rejoin_s.

- KV admission (request.c's reservation rule) and early consensus (vote.c's
  majority rule, where the scenario gives chains an accuracy);
- replicas that share one machine (the emulated hosts of the experiments):
  their stages' CPU times a measured factor (Cost.colocated).

What is not: network delay variance and loss, link contention, the encoder's
queue limit.
"""
import heapq
import math
import random
import re

M64 = (1 << 64) - 1


def splitmix64(state):
    state[0] = (state[0] + 0x9e3779b97f4a7c15) & M64
    z = state[0]
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


def unit(state):
    return (splitmix64(state) >> 11) * 2.0 ** -53


def prompt_tokens(audio_s, text):
    """The prompt: 12.5 audio tokens a second, the template and the text."""
    return int(math.ceil(audio_s * 12.5) + len((text or "").split()) * 1.5 + 20)


class Host:
    """CPU time on a cgroup quota: cpu CPUs per period (None: one full core).

    As the kernel's CFS bandwidth control does it (measured by `sa-sim
    calibrate`, calibration "cfs"): a budget of cpu x period per period, but
    a running thread's use is charged at the scheduler's ticks, so it is
    stopped only at the first tick after its budget ran out; what it overran
    is paid from the next period's budget. tick 0 is the strict model (stopped
    the moment the budget is gone)."""

    def __init__(self, cpu, period=0.010, tick=0.0, phase=0.0):
        self.cpu, self.period, self.tick = cpu, period, tick
        self.phase = phase     # where its periods start: each cgroup's own timer
        self.free_at = 0.0     # the host's single runnable thread is busy until
        self.win = -1          # the period whose budget is tracked
        self.used = 0.0        # of it (more than the budget: an overrun)

    def run(self, t, cost):
        """Runs cost CPU-seconds from t (after earlier work); returns the end."""
        t = max(t, self.free_at)
        if not self.cpu or self.cpu >= 1.0:
            self.free_at = t + cost
            return self.free_at
        budget = self.cpu * self.period
        while cost > 1e-12:
            w = int((t - self.phase) / self.period + 1e-9)  # a boundary: the next period
            if w != self.win:  # a new period: its budget less the last one's overrun
                over = max(0.0, self.used - budget) if w == self.win + 1 else 0.0
                self.win, self.used = w, over
            end_of_period = (w + 1) * self.period + self.phase
            if self.used >= budget - 1e-12 or end_of_period - t <= 1e-12:
                t = max(t, end_of_period)
                continue
            out = t + budget - self.used  # the budget runs out here ...
            if self.tick:                 # ... and is noticed at the next tick
                out = (math.floor((out - self.phase) / self.tick + 1e-9) + 1) * self.tick + \
                    self.phase
            step = min(cost, out - t, end_of_period - t)
            t += step
            self.used += step
            cost -= step
        self.free_at = t
        return t


def _interp(xs, ys, x):
    """Piecewise linear through (xs, ys), extended by the end segments."""
    k = 1
    while k < len(xs) - 1 and x > xs[k]:
        k += 1
    x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def table_step(t, rows, ctx):
    """A whole-model step of `rows` rows at mean context ctx from the table
    {"batch": [...], "ctx": [c0, c1], "step_s": [[at c0], [at c1]]}: linear
    in rows between measured batches and in context between c0 and c1 (past
    them by the end segments; never below a quarter of the c0 figure)."""
    at = [_interp(t["batch"], row, rows) for row in t["step_s"]]
    return max(0.25 * at[0], _interp(t["ctx"], at, ctx))


class Cost:
    """The calibrated costs (sim/calibration/*.json), CPU-seconds, times
    speed: how much slower the machine ran than at the calibration (the
    speed probes' ratio, tools/sa-experiment/speed.py)."""

    def __init__(self, cal, replicas=1, speed=1.0):
        self.c, self.speed = cal, speed
        # the replicas of an experiment share this machine's cores and caches:
        # a stage's CPU times the measured factor at 2 replicas, linear in R
        co = (cal.get("stage") or {}).get("colocated") or {"replicas": 2, "factor": 1.0}
        self.colocated = 1.0 + (co["factor"] - 1.0) * (replicas - 1) / (co["replicas"] - 1)

    def stage(self, layers, tokens, ctx_tokens, sampled, first=False, last=False, prompt=0):
        """A stage's step: its layers' compute, the per-step and per-token
        costs around it (prompt of the tokens a prefill chunk's, at
        per_prompt_token where the calibration has one), and (the last
        stage) sampling."""
        c = self.c["stage"]
        per_token = c.get("per_token", 0.0)
        rows = (per_token * (tokens - prompt) + c["per_prompt_token"] * prompt
                if "per_prompt_token" in c else per_token * tokens)
        return self.speed * self.colocated * (c["per_step"] + rows +
                                              self.compute(layers, tokens, ctx_tokens) +
                                              c.get("sample_per_token", 0.0) * sampled)

    def compute(self, layers, tokens, ctx_tokens):
        """The layers' share of a whole-model step over `tokens` rows that
        attend to ctx_tokens positions in all: bench-decode's table
        (calibration "decode_table"), interpolated."""
        if tokens <= 0:
            return 0.0
        return layers / self.c["model"]["layers"] * table_step(self.c["decode_table"], tokens,
                                                               ctx_tokens / tokens)

    def message(self):
        """A stage's Stage/Fork or Stage/Free: a job of its own in the
        stage's queue (calibration stage.message; a calibration without it
        counted them in per_step)."""
        return self.speed * self.colocated * self.c["stage"].get("message", 0.0)

    def coordinator(self, tokens, decode_tokens):
        c = self.c["coordinator"]
        return self.speed * (c["per_step"] + c.get("per_token", 0.0) * tokens +
                             c.get("per_sampled_token", 0.0) * decode_tokens)

    def coordinator_request(self):
        """A request's own work in the coordinator (its submission, its
        encoding's result, its prompt, its end): calibration
        coordinator.per_request, where measured."""
        return self.speed * self.c["coordinator"].get("per_request", 0.0)

    def encoder(self, audio_s):
        c = self.c["encoder"]
        return self.speed * (c["per_request"] + c["per_audio_s"] * audio_s)


class Req:
    __slots__ = ("i", "t_arrive", "n", "max_tokens", "prompt", "audio_s", "t_first", "t_end",
                 "chains", "prefilled", "prefill_inflight", "replica", "arrivals", "done",
                 "replays", "target", "answers", "accuracy", "running", "kv",
                 "t_encoded", "t_admitted", "forking", "moves", "freed", "enc", "enc_gen")

    def __init__(self, i, t, item, seed=0):
        self.i, self.t_arrive = i, t
        self.n, self.max_tokens = item["n"], item["max_tokens"]
        self.prompt, self.audio_s = item["prompt_tokens"], item["audio_s"]
        self.t_first = self.t_end = self.t_encoded = self.t_admitted = None
        self.chains = [0] * self.n          # tokens so far
        self.prefilled = 0                  # prompt tokens prefilled on its replica
        self.prefill_inflight = False
        self.forking = False                # its n chains being forked on every stage
        self.moves = 0                      # times it left a replica (a stale fork's check)
        self.freed = 0                      # chains whose sequences were freed
        self.enc, self.enc_gen = None, 0    # its encoder, and which call to it counts
        self.replica = None
        self.arrivals = []                  # (chain, t, tokens), as sa-load writes them
        self.done = False
        self.replays = set()                # chains to re-prefill after a move
        # each chain's length: max_tokens, or drawn -- a model that thinks
        # and answers: lognormal ("length"); the random model: an EOT at
        # each token with the calibration's probability ("eot_per_token",
        # geometric) -- capped at max_tokens
        self.target = [self.max_tokens] * self.n
        self.accuracy = item.get("accuracy")  # early consensus: P(a chain answers right)
        self.answers = []
        self.running = self.n
        self.kv = 0                         # KV blocks reserved on its replica
        ln, eot = item.get("length"), item.get("eot_per_token")
        if ln or eot or self.accuracy is not None:
            rng = random.Random(seed * 1000003 + i)
            if ln:
                self.target = [max(1, min(self.max_tokens, int(ln["median"] * math.exp(
                    ln.get("sigma", 0.5) * rng.gauss(0, 1))))) for _ in range(self.n)]
            elif eot:  # the first EOT's position, 1 on (1 - random() is in (0, 1])
                q = math.log1p(-min(eot, 1 - 1e-9))
                self.target = [min(self.max_tokens, 1 + int(math.log(1.0 - rng.random()) / q))
                               for _ in range(self.n)]
            if self.accuracy is not None:  # answer 0 is right; wrong ones are 1..4
                self.answers = [0 if rng.random() < self.accuracy else rng.randint(1, 4)
                                for _ in range(self.n)]

    def finished(self, c):
        return self.chains[c] >= self.target[c]

    def chain_done(self):
        """A chain ended; with early consensus (coordinator/vote.c, majority):
        decided once no answer can overtake the leader even if every running
        chain gave it. True when the request ends."""
        self.running -= 1
        if self.running and self.accuracy is not None:
            votes = {}
            for c in range(self.n):
                if self.finished(c):
                    votes[self.answers[c]] = votes.get(self.answers[c], 0) + 1
            top = sorted(votes.values(), reverse=True) + [0]
            if top[0] > top[1] + self.running:
                self.target = [min(x, y) for x, y in zip(self.target, self.chains)]
                self.running = 0
        return self.running == 0


class Sim:
    """One run. cal["kind"] "gpu" takes the GPU roofline (sim/gpu.py) for
    stages and encoders, else the CPU calibration; the coordinator's cost is
    cal["coordinator"] either way (sim/predict.py composes clusters from one
    simulated replica)."""

    def __init__(self, run, cal, items, seed=1, speed=1.0):
        self.run, self.cal = run, cal
        self.now = 0.0         # the event being run
        self.gpu = cal.get("kind") == "gpu"
        coord = Cost(cal, speed=speed)  # one formula, CPU or GPU cluster
        self.coord_cost, self.coord_request = coord.coordinator, coord.coordinator_request()
        if self.gpu:
            import gpu
            self.cost = gpu.GpuCost(cal)
        else:
            self.cost = Cost(cal, run["cluster"]["replicas"], speed)
        c = run["cluster"]
        # replicas past c["replicas"] are spares, out until an add_replica
        self.P, self.R = c["stages"], c["replicas"] + c.get("spare_replicas", 0)
        self.slots = c["stages"] + c["extra_microbatches"]
        self.max_batch = cal.get("max_batch", 64)
        self.chunk = cal.get("prefill_chunk", 128)
        self.layers = cal["model"]["layers"]
        self.per = [self.layers * (s + 1) // self.P - self.layers * s // self.P
                    for s in range(self.P)]
        h = run["hosts"]
        tick = cal.get("cfs", {}).get("tick_s", 0.0)
        # each cgroup's period timer starts when it first runs: the hosts'
        # periods are not aligned (aligned, they throttle in lockstep)
        phases = random.Random(seed)
        self.host = lambda cpu: Host(cpu, tick=tick, phase=phases.random() * 0.010)
        self.coord = self.host(h["coordinator_cpu"])
        self.coord_busy = 0.0  # coordinator CPU seconds, steps and rows in the window
        self.stage_cpu = [0.0] * self.P  # CPU seconds per stage index (all replicas), window
        self.step_s = 0.0  # dispatch to results back, summed over the window's steps
        self.steps = self.step_rows = 0
        self.encs = [self.host(h["encoder_cpu"]) for _ in range(c["encoders"])]
        self.enc_alive = [True] * len(self.encs)      # in the coordinator's pool
        self.enc_dead_at = [None] * len(self.encs)    # killed: no result past this
        self.stages = [[self.host(h["stage_cpu"]) for _ in range(self.P)] for _ in range(self.R)]
        self.joined = [k < c["replicas"] for k in range(self.R)]
        self.alive = list(self.joined)
        self.draining = [False] * self.R
        self.inflight = [0] * self.R
        self.active = [[] for _ in range(self.R)]   # requests admitted to each replica
        self.items = items
        self.ev = []
        self.seq = 0
        self.reqs = []
        self.queue = []        # encoded, waiting for a replica
        self.hop = cal["hop"]["latency_s"]   # coordinator <-> stage, stage <-> stage on CPU
        self.kv = cal["kv"]
        if self.gpu:  # what each stage's GPU holds beside its weights; the least wins
            self.kv_blocks = min(self.cost.kv_blocks(self.per[s], s == 0, s == self.P - 1,
                                                     self.kv["block_tokens"])
                                 for s in range(self.P))
        else:  # --kv-mem: K and V of the stage's layers (calibration kv)
            mem = c["kv_mem"]
            mult = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
            num = int(mem.rstrip("KMGiB"))
            mem_b = num * mult.get(mem[len(str(num)):], 1)
            per_block = (self.kv["bytes_per_token_layer"] * self.kv["block_tokens"] *
                         (self.layers // self.P))
            self.kv_blocks = mem_b // per_block
        self.kv_used = [0] * self.R
        # KV admission: as built, every chain's max_tokens is reserved; the
        # what-if "length" reserves what each chain will really use
        self.reserve_length = c.get("reserve") == "length"
        self.inflight_chains = set()
        self.rejected = 0      # requests no replica can ever hold

    def at(self, t, fn, *args):
        self.seq += 1
        heapq.heappush(self.ev, (t, self.seq, fn, args))

    def in_window(self, t):
        """t is inside the load's measured window (past its warm-up)."""
        return self.run["load"]["warmup"] <= t < self.run["load"]["duration"]

    def stage_hop(self, tokens):
        if self.gpu:
            return self.cost.hop(tokens, same_host=True)
        return self.hop

    # ------------------------------------------------------------ arrivals
    def arrivals(self):
        """sa-load's own arrival process and mix draw (client/load.c), so a
        simulated run sends the requests the measured one sent, when it did."""
        load = self.run["load"]
        state = [(load["seed"] ^ 0xa0761f62) & M64]
        t, self.sent = 0.0, 0
        if not load["rate"]:  # closed loop: concurrency in flight, one sent as one ends
            for _ in range(load.get("concurrency") or 0):
                self.send(t)
            return
        while t < load["duration"]:
            self.send(t)
            t += -math.log(1.0 - unit(state)) / load["rate"]

    def send(self, t):
        """Request number self.sent at t: its item by sa-load's mix draw,
        which depends on (seed, i) alone."""
        seed, i = self.run["load"]["seed"], self.sent
        w = [it["weight"] for it in self.items]
        h = [(seed * 0x2545f4914f6cdd1d + i) & M64]
        u, k = unit(h) * sum(w), 0
        while k < len(w) - 1 and u >= w[k]:
            u -= w[k]
            k += 1
        self.at(t, self.arrive, Req(i, t, self.items[k], seed))
        self.sent += 1

    def ended(self, t, r):
        """A request is answered: closed loop sends the next one then."""
        r.done, r.t_end = True, t
        if r.replica is not None and r.freed < r.n:  # chains cancelled by consensus
            self.free(t, r.replica, r.n - r.freed)
            r.freed = r.n
        self.release(r)
        load = self.run["load"]
        if not load["rate"] and t < load["duration"]:
            self.send(t)

    def arrive(self, t, r):
        self.reqs.append(r)
        t = self.coord.run(t, self.coord_request)
        if r.audio_s > 0:
            self.encode(t, r)
        else:
            self.encoded(t, r)

    def encode(self, t, r):
        """On the least busy encoder of the pool; with none left the request
        is never answered (the coordinator would wait 30 s and fail it)."""
        live = [e for e in range(len(self.encs)) if self.enc_alive[e]]
        if not live:
            return
        e = min(live, key=lambda e: self.encs[e].free_at)
        r.enc, r.enc_gen = e, r.enc_gen + 1
        end = self.encs[e].run(t + self.hop, self.cost.encoder(r.audio_s))
        self.at(end + self.hop, self.encoded, r, r.enc_gen)

    def encoded(self, t, r, gen=None):
        if gen is not None:  # an encoder's answer: the current call's, sent before a kill
            dead = self.enc_dead_at[r.enc]
            if gen != r.enc_gen or (dead is not None and t - self.hop > dead):
                return
        r.t_encoded = t
        self.queue.append(r)
        self.schedule(t)

    # ---------------------------------------------------------- scheduling
    def blocks(self, r):
        """KV blocks a request can ever need (the admission rule of
        request.c): the prompt once, each chain's max_tokens, one copied
        partial block per chain."""
        b = self.kv["block_tokens"]
        if self.reserve_length:  # what-if: each chain's real length, known ahead
            return -(-r.prompt // b) + sum(-(-x // b) + 1 for x in r.target)
        return -(-r.prompt // b) + r.n * (-(-r.max_tokens // b) + 1)

    def admit(self):
        """Queued requests, in order, to the replica with the most free KV
        blocks that can hold them; the first that fits nowhere waits (one
        that no empty replica could hold is refused, as request.c does)."""
        live = [k for k in range(self.R) if self.alive[k] and not self.draining[k]]
        while self.queue and live:
            r = self.queue[0]
            if self.blocks(r) > self.kv_blocks:
                self.queue.pop(0)
                self.rejected += 1
                continue
            k = min(live, key=lambda k: self.kv_used[k])
            if self.kv_blocks - self.kv_used[k] < self.blocks(r):
                return
            self.queue.pop(0)
            if r.t_admitted is None:
                r.t_admitted = self.now
            r.replica = k
            r.prefilled = 0
            r.kv = self.blocks(r)
            self.kv_used[k] += r.kv
            self.active[k].append(r)

    def release(self, r):
        if r.replica is not None:
            self.kv_used[r.replica] -= r.kv
            self.active[r.replica].remove(r)

    def schedule(self, t):
        self.admit()
        for k in range(self.R):
            while self.alive[k] and self.inflight[k] < self.slots:
                if not self.dispatch(t, k):
                    break

    def dispatch(self, t, k):
        """One micro-batch for replica k, as sched.c plans it: the free slots'
        even share of the ready sequences (a request to prefill, or a chain
        to replay, counts one), decode steps first, then one prefill or
        replay chunk if the share leaves room."""
        mine = self.active[k]
        ready = [(r, c) for r in mine
                 if r.prefilled >= r.prompt and not r.replays and not r.forking
                 for c in range(r.n)
                 if not r.finished(c) and (r.i, c) not in self.inflight_chains]
        waiting = [r for r in mine if not r.prefill_inflight and
                   (r.prefilled < r.prompt or r.replays)]
        free = self.slots - self.inflight[k]
        n_ready = len(ready) + sum(1 if r.prefilled < r.prompt else len(r.replays)
                                   for r in waiting)
        share = min(self.max_batch, -(-n_ready // free)) if n_ready else 0
        batch = ready[:share]
        pre, pre_tokens = None, 0
        if len(batch) < share and waiting:
            pre = waiting[0]
            if pre.prefilled < pre.prompt:
                pre_tokens = min(self.chunk, pre.prompt - pre.prefilled)
        if pre is not None and pre_tokens == 0:  # replay: a chain's prompt + tokens
            c = min(pre.replays)
            pre_tokens = min(self.chunk, pre.prompt + pre.chains[c])
        if not batch and pre is None:
            return False
        ctx = sum(r.prompt + r.chains[c] for r, c in batch)
        if pre is not None:
            ctx += pre.prefilled * pre_tokens
        tokens = len(batch) + pre_tokens
        for r, c in batch:
            self.inflight_chains.add((r.i, c))
        if pre is not None:
            pre.prefill_inflight = True
        self.inflight[k] += 1
        end = t + self.hop
        in_window = self.in_window(t)
        for s, host in enumerate(self.stages[k]):
            last = s == self.P - 1
            cpu = self.cost.stage(self.per[s], tokens, ctx,
                                  len(batch) + (pre is not None) if last else 0, s == 0, last,
                                  prompt=pre_tokens)
            if in_window:
                self.stage_cpu[s] += cpu
            end = host.run(end, cpu)
            end += self.hop if last else self.stage_hop(tokens)
        if in_window:
            self.step_s += end - t
        self.at(end, self.step_done, k, batch, pre, pre_tokens, tokens)
        return True

    def step_done(self, t, k, batch, pre, pre_tokens, tokens):
        if not self.alive[k]:
            return  # its results are dropped (an older epoch)
        self.inflight[k] -= 1
        cost = self.coord_cost(tokens, len(batch))
        if self.in_window(t):
            self.coord_busy += cost
            self.steps += 1
            self.step_rows += tokens
        end = self.coord.run(t, cost)
        for r, c in batch:
            self.inflight_chains.discard((r.i, c))
            if r.done or r.replica != k or r.finished(c):
                continue  # cancelled by early consensus while in flight
            r.chains[c] += 1
            r.arrivals.append((c, end, 1))
            if r.t_first is None:
                r.t_first = end
            if r.finished(c):
                r.freed += 1
                self.free(end, k, 1)
                if r.chain_done():
                    self.ended(end, r)
        if pre is not None and pre.replica == k:
            pre.prefill_inflight = False
            if pre.prefilled < pre.prompt:
                pre.prefilled += pre_tokens
                if pre.prefilled >= pre.prompt and pre.n > 1 and not pre.replays:
                    self.fork(end, k, pre)  # (after a move each chain replays its own)
            elif pre.replays:
                pre.replays.discard(min(pre.replays))  # one chunk per chain (approx.)
        self.at(end, self.schedule)

    def fork(self, t, k, r):
        """The prompt is in: request.c's start_fork sends Stage/Fork to every
        stage at once; each waits in its stage's queue behind the steps
        there (worker/stage.c runs jobs in order), and the chains decode once
        every stage has answered."""
        r.forking = True
        end = max(self.message(t + self.hop, k, s) for s in range(self.P))
        self.at(end + self.hop, self.fork_done, k, r, r.moves)

    def free(self, t, k, chains):
        """request.c's chain_free: a Stage/Free per chain to every stage of
        its replica, each a job in the stage's queue (their answers change
        nothing the coordinator waits for)."""
        for s in range(self.P):
            for _ in range(chains):
                self.message(t + self.hop, k, s)

    def message(self, t, k, s):
        """Stage s of replica k runs a fork or a free that reaches it at t;
        returns when it is done."""
        cpu = self.cost.message()
        if self.in_window(t):
            self.stage_cpu[s] += cpu
        return self.stages[k][s].run(t, cpu)

    def fork_done(self, t, k, r, moves):
        """The coordinator takes the answers when its thread is free (their
        CPU is in its per-request cost)."""
        if r.moves != moves:
            return  # the request moved meanwhile: it re-prefills where it went
        r.forking = False
        self.at(self.coord.run(t, 0.0), self.schedule)

    # -------------------------------------------------------------- faults
    def requeue(self, r):
        """A request whose replica is lost goes back to the queue's head; its
        chains re-prefill their prompt and tokens so far where it lands."""
        self.release(r)
        r.replica, r.prefill_inflight, r.forking = None, False, False
        r.moves += 1
        r.replays = {c for c in range(r.n) if 0 < r.chains[c] and not r.finished(c)}
        return r

    def lose_replica(self, t, k, back_at=None):
        self.alive[k] = False
        self.inflight[k] = 0
        moved = [self.requeue(r) for r in list(self.active[k])]
        self.queue[:0] = moved
        self.inflight_chains = {x for x in self.inflight_chains
                                if self.reqs_by_i[x[0]].replica is not None}
        if back_at is not None:
            self.at(back_at, self.replica_back, k)
        self.schedule(t)

    def replica_back(self, t, k):
        self.alive[k] = self.joined[k] = True
        self.stages[k] = [self.host(self.run["hosts"]["stage_cpu"]) for _ in range(self.P)]
        self.schedule(t)

    def coordinator_down(self, t, restart_s):
        """Everything stops; at restart every running request re-prefills."""
        for k in range(self.R):
            self.alive[k] = False
        self.at(t + restart_s, self.coordinator_up)

    def coordinator_up(self, t):
        for k in range(self.R):
            self.alive[k] = self.joined[k]
            self.inflight[k] = 0
        self.inflight_chains = set()
        moved = [self.requeue(r) for k in range(self.R) for r in list(self.active[k])]
        self.queue[:0] = moved
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
            elif a == "cpu" and tgt.startswith("r") and "s" in tgt[1:]:
                k, st = (int(x) for x in tgt[1:].split("s"))
                self.at(t, self.set_cpu, k, st, f["cpu"])
                if "for" in f:
                    self.at(t + f["for"], self.set_cpu, k, st, self.run["hosts"]["stage_cpu"])
            elif tgt == "coord" and a == "kill":
                self.at(t, self.coordinator_down,
                        f.get("restart_after", 0) + cal["coordinator_start_s"])
            elif tgt.startswith("enc") and a == "kill":
                e = int(tgt[3:])
                self.at(t, self.kill_encoder, e)
                self.at(t + cal["kill_detect_s"], self.lose_encoder, e)
            elif a in ("drain", "undrain") and re.fullmatch(r"r\d+(s\d+)?", tgt):
                k = int(tgt[1:].split("s")[0])  # a replica, or the replica of a stage
                self.at(t, self.set_draining, k, a == "drain")
                if a == "drain" and "for" in f:
                    self.at(t + f["for"], self.set_draining, k, False)
            elif a == "add_replica":  # a spare's stages start and register
                self.at(t + cal["rejoin_s"], self.replica_back, int(tgt[1:]))

    def kill_encoder(self, t, e):
        self.enc_dead_at[e] = t

    def lose_encoder(self, t, e):
        """A killed encoder noticed: out of the pool, and the requests whose
        encoding it had not answered go to another (request.c's retry)."""
        self.enc_alive[e] = False
        for r in self.reqs:
            if r.enc == e and r.t_encoded is None:
                self.encode(t, r)

    def set_draining(self, t, k, on):
        """A drained replica takes no new requests; its own finish in place."""
        self.draining[k] = on
        self.schedule(t)

    def set_cpu(self, t, k, s, cpu):
        self.stages[k][s].cpu = cpu

    # ----------------------------------------------------------------- run
    def sample(self, t):
        """Once a simulated second: the work in flight (what a lost replica
        takes with it), for the fault model of the predictions."""
        act = [r for rs in self.active for r in rs]
        self.samples.append({
            "t": t, "requests": len(act), "queued": len(self.queue),
            "tokens": sum(sum(r.chains) for r in act),
            "replay_tokens": sum(r.prompt + sum(r.chains) for r in act)})
        self.at(t + 1.0, self.sample)

    def simulate(self):
        self.arrivals()
        self.faults()
        self.reqs_by_i = {}
        self.samples = []
        self.at(0.0, self.sample)
        horizon = self.run["load"]["duration"] + self.run["load"]["timeout"]
        while self.ev:
            t, _, fn, args = heapq.heappop(self.ev)
            if t > horizon:
                break
            self.now = t
            if fn == self.arrive:
                self.reqs_by_i[args[0].i] = args[0]
            fn(t, *args)
        return self.reqs


def summarize(run, reqs):
    """The measured summary's keys (tools/sa-experiment/analyze.py)."""
    lo, hi = run["load"]["warmup"], run["load"]["duration"]
    tokens = sum(c for r in reqs for _, t, c in r.arrivals if lo <= t < hi)
    done = [r for r in reqs if r.done]
    if not run["load"].get("drain", True):  # sa-load cancels what runs at the end
        done = [r for r in done if r.t_end <= hi]
    ans = sum(1 for r in done if lo <= r.t_end < hi)
    itl = []
    for r in reqs:  # per chain, as analyze.py measures it
        last = {}
        for chain, t, _ in r.arrivals:
            if chain in last:
                itl.append(t - last[chain])
            last[chain] = t

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
        "ttft_by_request": sorted([r.i, round(r.t_first - r.t_arrive, 4)] for r in done
                                  if r.t_first is not None),
        "itl_s": pcts(itl),
        "e2e_s": pcts([r.t_end - r.t_arrive for r in done]),
        "coordinator": coordinator_view(reqs, lo, hi),
    }


def coordinator_view(reqs, lo, hi):
    """The means the coordinator's own histograms give (analyze.py's
    coordinator_view), over the requests that arrived in [lo, hi)."""
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return round(sum(xs) / len(xs), 5) if xs else None
    rs = [r for r in reqs if lo <= r.t_arrive < hi]
    return {
        "encode_duration_mean_s": mean([r.t_encoded - r.t_arrive for r in rs
                                        if r.audio_s > 0 and r.t_encoded is not None]),
        "queue_duration_mean_s": mean([r.t_admitted - r.t_encoded for r in rs
                                       if r.t_admitted is not None and r.t_encoded is not None]),
        "time_to_first_token_mean_s": mean([r.t_first - r.t_arrive for r in rs
                                            if r.t_first is not None]),
    }
