"""The machine's speed at a moment, as one figure.

This machine is shared, and its speed moves by 10-20 % within an hour. A
short, fixed decode benchmark (bench-decode over the run's own model, one
thread, batch 8 at 64 tokens of context) taken before and after each run
(sa-experiment: speed.json) and around a calibration (sa-sim calibrate:
"speed") lets the simulator scale the calibration's CPU costs to the speed
each run met, instead of taking a drift of the machine for an error of the
model."""
import math
import os
import re
import subprocess

ARGS = ["--threads", "1", "--batches", "8", "--ctx", "64", "--steps", "300", "--prefill", "0"]


def probe(bin_dir, model, repeats=3):
    """Seconds per step of bench-decode ARGS on model: the median of
    `repeats` runs; None (and why) if it cannot run."""
    exe = os.path.join(bin_dir, "bench-decode")
    xs = []
    for _ in range(repeats):
        try:
            out = subprocess.run([exe, "--model", model] + ARGS, capture_output=True, text=True,
                                 check=True, timeout=120,
                                 env=dict(os.environ, OPENBLAS_NUM_THREADS="1")).stdout
        except (OSError, subprocess.SubprocessError) as e:
            return None, "bench-decode: %s" % e
        m = re.search(r"batch\s+8: step ([\d.]+) ms", out)
        if not m:
            return None, "bench-decode printed no step time"
        xs.append(float(m.group(1)) / 1e3)
    return sorted(xs)[len(xs) // 2], None


def record(bin_dir, model):
    """{"step_s": ...} for speed.json or a calibration, or {"error": why}."""
    s, why = probe(bin_dir, model)
    return {"probe": "bench-decode " + " ".join(ARGS), "step_s": s} if s else {"error": why}


def valid(step_s):
    """Whether step_s is a probe's figure: a finite number of seconds > 0."""
    return (isinstance(step_s, (int, float)) and not isinstance(step_s, bool) and
            math.isfinite(step_s) and step_s > 0)


def mean(probes):
    """The mean step_s of {"before": record(), "after": record()} (a run's
    speed.json, a calibration's "speed"), over the probes that ran; None if
    none did or the value is not such a dict."""
    xs = probes.values() if isinstance(probes, dict) else ()
    got = [x.get("step_s") for x in xs if isinstance(x, dict) and valid(x.get("step_s"))]
    return sum(got) / len(got) if got else None


def factor(run_speed, cal_speed):
    """How much slower (> 1) or faster the machine ran a run than its
    calibration: the mean of the run's probes over the calibration's; 1.0
    when either is missing."""
    got, ref = mean(run_speed), mean(cal_speed)
    return got / ref if got and ref else 1.0
