#!/usr/bin/python3
"""compare — sa-cluster's CPU decoder against llama.cpp on this machine: the
same weights, the same shapes, paired rounds, medians of our ÷ their speed.

  bench/llamacpp/compare.py [--rounds 7] [--threads 1,2] [--formats bf16,q8_0,q4_0]
                            [--model DIR] [--work DIR] [--bin DIR]

What it does, each step printed as it goes:
 1. llama.cpp's source from PyPI: the llama-cpp-python sdist (pinned below)
    vendors a llama.cpp release; built with cmake for this CPU's AVX-512,
    VNNI and BF16 (not AMX: its AMX matmul segfaults on these Q8_0/Q4_0
    weights), targets llama-bench, llama-batched-bench and llama-quantize.
    Nothing is downloaded but the sdist; it is built once into --work.
 2. Our checkpoint (bf16) written as a GGUF by to_gguf.py with llama.cpp's own
    gguf-py (needs numpy: apt-get install python3-numpy), then quantized by
    llama-quantize (Q8_0, Q4_0: each project's defaults for the LM head: ours
    Q8_0, theirs Q8_0 / Q6_K); ours by `sa-model quantize`.
 3. Rounds: in each, for every format and thread count, bench-decode and the
    llama.cpp tools one after the other (which goes first alternates by
    round, so a drift of the shared machine falls on both):
      prefill 512   ours: --prefill 512 (best of 3)   theirs: llama-bench -p 512
                    -n 0 -r 3 (best of its 3 samples)
      decode B=1,16 ours: --batches 1,16 --ctx 128 --steps 32
                    theirs: llama-batched-bench -npp 128 -ntg 32 -npl 1,16
    Both decode at contexts 128..160 with a 16-bit KV cache (ours bf16, theirs
    f16), tokens/s of the decode steps alone.
 4. The table: per format, thread count and measure, the median tokens/s of
    each side and the median of the rounds' ratios (ours ÷ llama.cpp; above 1:
    we are faster). Raw figures in WORK/results.json.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.realpath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SDIST = "llama-cpp-python==0.3.36"  # vendors llama.cpp (its commit is printed)
MEASURES = ("prefill", "decode1", "decode16")


def say(msg):
    print("compare: " + msg, flush=True)


def die(msg):
    print("compare: " + msg, file=sys.stderr)
    sys.exit(1)


def run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode:
        die("%s failed (exit %d):\n%s" % (" ".join(argv[:3]), r.returncode,
                                          (r.stderr or r.stdout)[-2000:]))
    return r.stdout


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def fetch_and_build(work):
    """llama.cpp's source from the PyPI sdist, built for this CPU; the tool dir."""
    src = os.path.join(work, "src")
    lc = None
    if os.path.isdir(src):
        for d in os.listdir(src):
            p = os.path.join(src, d, "vendor", "llama.cpp")
            if os.path.isdir(p):
                lc = p
    if not lc:
        say("fetching %s (sdist, PyPI) ..." % SDIST)
        os.makedirs(src, exist_ok=True)
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             SDIST, "-d", src])
        tgz = [f for f in os.listdir(src) if f.endswith(".tar.gz")]
        if not tgz:
            die("pip download left no sdist in " + src)
        with tarfile.open(os.path.join(src, tgz[0])) as t:
            t.extractall(src, filter="data")
        return fetch_and_build(work)
    bld = os.path.join(work, "build")
    tools = os.path.join(bld, "bin")
    want = ("llama-bench", "llama-batched-bench", "llama-quantize")
    if not all(os.path.exists(os.path.join(tools, t)) for t in want):
        say("building llama.cpp (cmake, AVX-512 without AMX; a few minutes on 2 cores) ...")
        # this CPU's vector extensions, but not AMX: llama.cpp's AMX matmul
        # (ggml_backend_amx_mul_mat) segfaults on this model's Q8_0 and Q4_0
        # weights (release vendored by the sdist above); the AVX-512 paths
        # and its weight repacking stay on. Its bf16 matmul has no AMX path.
        have = cpu_flags()
        isa = ["-DGGML_%s=%s" % (f, "ON" if flag in have else "OFF") for f, flag in (
            ("AVX", "avx"), ("AVX2", "avx2"), ("FMA", "fma"), ("F16C", "f16c"),
            ("BMI2", "bmi2"), ("AVX512", "avx512f"), ("AVX512_VBMI", "avx512vbmi"),
            ("AVX512_VNNI", "avx512_vnni"), ("AVX512_BF16", "avx512_bf16"))]
        run(["cmake", "-S", lc, "-B", bld, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF",
             "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
             "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
             "-DBUILD_SHARED_LIBS=OFF"] + isa)
        run(["cmake", "--build", bld, "-j", str(os.cpu_count() or 2), "--target"] + list(want))
    return lc, tools


def models(a, lc, tools):
    """{format: (our checkpoint dir, their gguf)}."""
    out = {}
    gg = os.path.join(a.work, "models")
    os.makedirs(gg, exist_ok=True)
    base = os.path.join(gg, "bf16.gguf")
    if not os.path.exists(base):
        say("writing %s from %s ..." % (base, a.model))
        env = dict(os.environ, PYTHONPATH=os.path.join(lc, "gguf-py"))
        run([sys.executable, os.path.join(HERE, "to_gguf.py"), a.model, base], env=env)
    for f in a.formats:
        ours, theirs = a.model, base
        if f != "bf16":
            ours = os.path.join(gg, "ours-" + f)
            theirs = os.path.join(gg, f + ".gguf")
            if not os.path.exists(os.path.join(ours, "config.json")):
                say("sa-model quantize --type %s ..." % f)
                run([os.path.join(a.bin, "sa-model"), "quantize", a.model, ours, "--type", f])
            if not os.path.exists(theirs):
                say("llama-quantize %s ..." % f.upper())
                run([os.path.join(tools, "llama-quantize"), base, theirs, f.upper()])
        out[f] = (ours, theirs)
    return out


def ours(a, model, threads):
    o = run([os.path.join(a.bin, "bench-decode"), "--model", model, "--threads", str(threads),
             "--batches", "1,16", "--ctx", "128", "--steps", "32", "--prefill", "512"],
            env=dict(os.environ, OPENBLAS_NUM_THREADS=str(threads)))
    r = {}
    m = re.search(r"prefill 512 tokens: [\d.]+ s \(best of 3\), (\d+) tok", o)
    if m:
        r["prefill"] = float(m.group(1))
    for m in re.finditer(r"batch\s+(\d+): step [\d.]+ ms, ([\d.]+) tokens/s", o):
        r["decode%s" % m.group(1)] = float(m.group(2))
    return complete(r, "bench-decode", o)


def theirs(tools, gguf, threads):
    o = run([os.path.join(tools, "llama-bench"), "-m", gguf, "-p", "512", "-n", "0", "-r", "3",
             "-t", str(threads), "-o", "json"])
    r = {}
    try:
        r["prefill"] = max(json.loads(o)[0]["samples_ts"])
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    o = run([os.path.join(tools, "llama-batched-bench"), "-m", gguf, "-c", "4096", "-b", "2048",
             "-ub", "512", "-npp", "128", "-ntg", "32", "-npl", "1,16", "-t", str(threads),
             "--output-format", "jsonl"])
    for line in o.splitlines():
        try:
            j = json.loads(line) if line.startswith("{") else None
            if j:
                r["decode%d" % j["pl"]] = float(j["speed_tg"])
        except (ValueError, KeyError, TypeError):
            pass
    return complete(r, "llama-bench / llama-batched-bench", o)


def complete(r, who, out):
    """r when it holds every measure, else a clear stop (the tool's output
    changed, or it printed something else)."""
    missing = [k for k in MEASURES if k not in r]
    if missing:
        die("%s: no %s in its output:\n%s" % (who, ", ".join(missing), out[-1500:]))
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--formats", default="bf16,q8_0,q4_0")
    ap.add_argument("--model", default=os.path.join(REPO, "build", "models", "small-seed1"))
    ap.add_argument("--work", default=os.path.join(REPO, "build", "llamacpp"))
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "bin"))
    a = ap.parse_args()
    a.threads = [int(t) for t in a.threads.split(",")]
    a.formats = a.formats.split(",")
    if set(a.formats) - {"bf16", "q8_0", "q4_0"} or a.rounds < 1:
        die("--formats: bf16, q8_0, q4_0; --rounds: 1 or more")
    if not os.path.exists(os.path.join(a.model, "config.json")):
        die("%s: no checkpoint (make build writes build/models/small-seed1)" % a.model)
    lc, tools = fetch_and_build(a.work)
    commit = run(["git", "-C", lc, "rev-parse", "--short", "HEAD"]).strip() \
        if os.path.isdir(os.path.join(lc, ".git")) else SDIST
    say("llama.cpp: %s; ours: %s" % (commit, run(["git", "-C", REPO, "rev-parse", "--short",
                                                     "HEAD"]).strip()))
    ms = models(a, lc, tools)
    rows = []
    for k in range(a.rounds):
        t0 = time.time()
        for f in a.formats:
            for t in a.threads:
                sides = [("ours", lambda: ours(a, ms[f][0], t)),
                         ("llama.cpp", lambda: theirs(tools, ms[f][1], t))]
                if k % 2:
                    sides.reverse()
                got = {name: fn() for name, fn in sides}
                rows.append({"round": k, "format": f, "threads": t, **got})
        say("round %d/%d done (%.0f s)" % (k + 1, a.rounds, time.time() - t0))
    with open(os.path.join(a.work, "results.json"), "w") as fo:
        json.dump({"llama.cpp": commit, "rounds": rows}, fo, indent=1)
    med = statistics.median
    print("\n| format | threads | measure | ours tokens/s | llama.cpp tokens/s "
          "| ours ÷ llama.cpp |")
    print("|---|---|---|---|---|---|")
    for f in a.formats:
        for t in a.threads:
            rs = [r for r in rows if r["format"] == f and r["threads"] == t]
            for m, label in zip(MEASURES, ("prefill 512", "decode batch 1",
                                           "decode batch 16")):
                o = med(r["ours"][m] for r in rs)
                l = med(r["llama.cpp"][m] for r in rs)
                q = med(r["ours"][m] / r["llama.cpp"][m] for r in rs)
                print("| %s | %d | %s | %.1f | %.1f | **%.2f** |" % (f, t, label, o, l, q))
    print("\n(%d paired rounds, medians; %s)" % (a.rounds, os.path.join(a.work, "results.json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
