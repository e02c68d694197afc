"""testtime — the test-time scaling experiment, run on the cluster.

    /usr/bin/python3 train/testtime.py [--model models/r1-mini] [--clips 200]
        [--temperature 1.5] [--ns 1,2,4,8,16] [--out train/results/testtime]

Makes a held-out set (train/tasks.py, seed --seed: never a training seed),
starts a local cluster on the model (sa-cluster up: coordinator, encoder,
one replica of two stages, CurveZMQ, free ports), and submits every clip
with sa-client, several requests at a time:
  greedy    temperature 0, one chain
  majority  n sampled chains voted by the coordinator with early consensus
            (it stops the running chains once the leader cannot be
            overtaken; the answer equals the vote over all n chains)
  none      the same n chains (same seeds: the same tokens) run to the end,
            which is what the tokens would be without early consensus
A request's seed is the clip's index, so the chains of n=2 are the first
two of n=16 (the RNG is keyed by seed, chain and position).

Writes OUT/results.json (accuracy overall and per task, tokens per request
with and without early consensus, the saving), OUT/requests.jsonl (each
request's answer, votes, chain answers, tokens), OUT/accuracy_vs_chains.png
and OUT/accuracy_vs_tokens.png, and prints the table.
"""
import argparse
import concurrent.futures as cf
import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks as T  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def topology(path, model, run_dir, kv_mem):
    with open(path, "w") as f:
        f.write(f"""model: {model}
run_dir: {run_dir}
threads: 1
coordinator:
  listen: tcp://127.0.0.1:{free_port()}
encoders:
  - listen: tcp://127.0.0.1:{free_port()}
replicas:
  - name: r0
    kv_mem: {kv_mem}
    stages:
      - layers: auto
        listen: tcp://127.0.0.1:{free_port()}
      - layers: auto
        listen: tcp://127.0.0.1:{free_port()}
""")
    with open(path) as f:
        return f.read().split("listen: ")[1].split()[0]


class Cluster:
    def __init__(self, bin_dir, yaml_path, coordinator, run_dir):
        self.bin, self.yaml, self.co, self.run_dir = bin_dir, yaml_path, coordinator, run_dir
        self.env = dict(os.environ, SA_KEY=os.path.join(run_dir, "keys", "client.key"),
                        SA_ALLOW=os.path.join(run_dir, "keys", "allow"),
                        OPENBLAS_NUM_THREADS="1")

    def up(self):
        subprocess.run([os.path.join(self.bin, "sa-cluster"), "down", self.yaml],
                       capture_output=True)
        # a fresh journal: an earlier run's requests are not this run's
        shutil.rmtree(os.path.join(self.run_dir, "state"), ignore_errors=True)
        r = subprocess.run([os.path.join(self.bin, "sa-cluster"), "up", self.yaml, "--timeout",
                            "120"], capture_output=True, text=True, env=self.env)
        if r.returncode:
            raise SystemExit(f"testtime: sa-cluster up failed:\n{r.stdout}{r.stderr}")

    def down(self):
        subprocess.run([os.path.join(self.bin, "sa-cluster"), "down", self.yaml],
                       capture_output=True)

    def submit(self, clip, question, n, temperature, seed, vote, max_tokens):
        cmd = [os.path.join(self.bin, "sa-client"), "submit", clip, "--prompt", question,
               "-n", str(n), "--temperature", str(temperature), "--seed", str(seed),
               "--vote", vote, "--max-tokens", str(max_tokens), "--json",
               "--coordinator", self.co, "--timeout", "600"]
        for attempt in range(3):
            r = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
            final = [json.loads(x) for x in r.stdout.splitlines() if '"type":"final"' in x]
            if r.returncode == 0 and final:
                return final[-1]
            time.sleep(1 + attempt)
        raise RuntimeError(f"sa-client failed ({r.returncode}): {r.stderr.strip()[-400:]}")


def voted(final):
    """The coordinator's answer, normalised as it compared them: the final
    event carries the winning chain's raw text (e.g. "\\n6")."""
    for c in final["chains"]:
        if c["answer"] == final["answer"] and c["normalized_answer"]:
            return c["normalized_answer"]
    return ""


def majority(answers):
    """Plurality, ties to the earliest answer (vote.c's rule, chain order)."""
    count, first = {}, {}
    for i, a in enumerate(answers):
        if a:
            count[a] = count.get(a, 0) + 1
            first.setdefault(a, i)
    if not count:
        return ""
    return max(count, key=lambda a: (count[a], -first[a]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "r1-mini"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--seed", type=int, default=9001, help="held-out set seed")
    ap.add_argument("--temperature", type=float, default=1.5)
    ap.add_argument("--ns", default="1,2,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    ap.add_argument("--out", default=os.path.join(ROOT, "train", "results", "testtime"))
    a = ap.parse_args()
    ns = [int(x) for x in a.ns.split(",") if x]
    if not ns or min(ns) < 1 or max(ns) > 64:
        raise SystemExit("testtime: --ns takes chain counts between 1 and 64")
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(ROOT, "build", "testtime")
    os.makedirs(work, exist_ok=True)
    clips_dir = os.path.join(work, "clips")
    rows = T.make_set(a.seed, a.clips, clips_dir)
    print(f"testtime: {len(rows)} held-out clips (seed {a.seed}) in {clips_dir}", file=sys.stderr)
    yaml_path = os.path.join(work, "cluster.yaml")
    co = topology(yaml_path, os.path.abspath(a.model), os.path.join(work, "run"), "256MiB")
    cl = Cluster(a.bin, yaml_path, co, os.path.join(work, "run"))
    cl.up()
    runs = [("greedy", 1, 0.0, "majority")]
    for n in ns:
        runs.append(("majority", n, a.temperature, "majority"))
        if n > 1:
            runs.append(("none", n, a.temperature, "none"))
    records = []
    try:
        for label, n, temp, vote in runs:
            t0 = time.time()

            def one(i):
                r = rows[i]
                f = cl.submit(os.path.join(clips_dir, r["file"]), r["question"], n, temp, i, vote,
                              a.max_tokens)
                chains = [c["normalized_answer"] for c in f["chains"]]
                ans = voted(f) if vote != "none" else majority(chains)
                return {"run": label, "n": n, "temperature": temp, "clip": r["file"],
                        "task": r["task"], "expected": r["answer"], "answer": ans,
                        "correct": ans == r["answer"], "votes": f["votes"],
                        "chain_answers": chains,
                        "chain_tokens": [c["reasoning_tokens"] + c["answer_tokens"]
                                         for c in f["chains"]],
                        "tokens_generated": f["tokens_generated"]}
            with cf.ThreadPoolExecutor(a.concurrency) as ex:
                got = list(ex.map(one, range(len(rows))))
            records += got
            acc = sum(g["correct"] for g in got) / len(got)
            tok = sum(g["tokens_generated"] for g in got) / len(got)
            print(f"testtime: {label:8s} n={n:2d}: accuracy {acc:.3f}, {tok:.0f} tokens/request "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    finally:
        cl.down()
    with open(os.path.join(a.out, "requests.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    summary = summarize(records, ns, a)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    print(table(summary))
    plot(summary, a.out)


def summarize(records, ns, a):
    def stats(run, n):
        rs = [r for r in records if r["run"] == run and r["n"] == n]
        if not rs:
            return None
        by = {t: [r["correct"] for r in rs if r["task"] == t] for t in T.TASKS}
        return {"accuracy": sum(r["correct"] for r in rs) / len(rs),
                "by_task": {t: sum(v) / len(v) for t, v in by.items() if v},
                "tokens_per_request": sum(r["tokens_generated"] for r in rs) / len(rs),
                "requests": len(rs)}
    out = {"model": os.path.relpath(os.path.abspath(a.model), ROOT), "clips": a.clips,
           "held_out_seed": a.seed, "temperature": a.temperature, "max_tokens": a.max_tokens,
           "greedy": stats("greedy", 1), "chains": {}}
    for n in ns:
        m = stats("majority", n)
        full = stats("none", n) if n > 1 else m
        m["tokens_without_early_consensus"] = full["tokens_per_request"]
        m["accuracy_without_early_consensus"] = full["accuracy"]
        m["tokens_saved_fraction"] = 1 - m["tokens_per_request"] / full["tokens_per_request"]
        out["chains"][str(n)] = m
    return out


def table(s):
    lines = [f"held-out clips: {s['clips']} (seed {s['held_out_seed']}), temperature "
             f"{s['temperature']}, model {s['model']}",
             f"{'':14s} {'accuracy':>8s}  " + "  ".join(f"{t:>7s}" for t in T.TASKS) +
             f"  {'tok/req':>8s} {'no-EC tok':>9s} {'saved':>6s}"]
    g = s["greedy"]
    lines.append(f"{'greedy':14s} {g['accuracy']:8.3f}  " +
                 "  ".join(f"{g['by_task'].get(t, 0):7.3f}" for t in T.TASKS) +
                 f"  {g['tokens_per_request']:8.1f}")
    for n, m in s["chains"].items():
        lines.append(f"{'majority n=' + n:14s} {m['accuracy']:8.3f}  " +
                     "  ".join(f"{m['by_task'].get(t, 0):7.3f}" for t in T.TASKS) +
                     f"  {m['tokens_per_request']:8.1f} {m['tokens_without_early_consensus']:9.1f}"
                     f" {100 * m['tokens_saved_fraction']:5.1f}%")
    return "\n".join(lines)


def plot(s, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ns = [int(n) for n in s["chains"]]
    acc = [s["chains"][str(n)]["accuracy"] for n in ns]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ns, acc, "o-", label=f"majority vote, temperature {s['temperature']}")
    ax.axhline(s["greedy"]["accuracy"], color="gray", ls="--", label="greedy (1 chain)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("chains per request")
    ax.set_ylabel("accuracy (held-out)")
    ax.set_title("Test-time scaling on the cluster")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_chains.png"), dpi=110)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([s["chains"][str(n)]["tokens_per_request"] for n in ns], acc, "o-",
            label="early consensus (as served)")
    ax.plot([s["chains"][str(n)]["tokens_without_early_consensus"] for n in ns], acc, "s--",
            label="every chain to its end")
    for n, x, y in zip(ns, [s["chains"][str(n)]["tokens_per_request"] for n in ns], acc):
        ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per request")
    ax.set_ylabel("accuracy (held-out)")
    ax.set_title("Accuracy against tokens spent")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_tokens.png"), dpi=110)


if __name__ == "__main__":
    main()
