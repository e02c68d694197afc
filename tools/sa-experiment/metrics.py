"""The coordinator's /metrics (Prometheus text format): parsed, and what a
load did between two scrapes. Used by sa-experiment (each run's coordinator
view) and by sa-sim's calibration (steps, tokens and CPU per step)."""

# the coordinator's histograms of a request's life (coordinator/http.c)
HISTOGRAMS = ("encode_duration", "queue_duration", "time_to_first_token", "step_duration")


def parse(text):
    """{metric name: value}, each name summed over its label sets; lines
    that are not samples (comments, malformed) are skipped."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, rest = line.partition(" ")
        name = name.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(rest.split()[0])
        except (ValueError, IndexError):
            pass
    return out


def delta(m0, m1):
    """What happened between scrapes m0 and m1 (parsed): steps, step tokens,
    generated tokens, requests, their prompt tokens, and each histogram's sum, count and mean."""
    d = lambda k: m1.get(k, 0.0) - m0.get(k, 0.0)
    out = {"steps": d("sa_step_duration_seconds_count"), "tokens": d("sa_step_tokens_total"),
           "generated": d("sa_generated_tokens_total"), "requests": d("sa_requests_total"),
           "prompt_tokens": d("sa_prompt_tokens_total")}
    for h in HISTOGRAMS:
        s, n = d("sa_%s_seconds_sum" % h), d("sa_%s_seconds_count" % h)
        out[h + "_sum"], out[h + "_count"] = s, n
        out[h + "_mean_s"] = round(s / n, 5) if n else None
    return out
