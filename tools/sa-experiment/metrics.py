"""The coordinator's /metrics (Prometheus text format): parsed, and what a
load did between two scrapes. Used by sa-experiment (each run's coordinator
view) and by sa-sim's calibration (steps, tokens and CPU per step)."""

# the coordinator's histograms of a request's life (coordinator/http.c)
HISTOGRAMS = ("encode_duration", "queue_duration", "time_to_first_token", "step_duration")


def parse(text):
    """{metric name: value}, each name summed over its label sets, and each
    histogram bucket as 'name{le="x"}' summed over its other labels; lines
    that are not samples (comments, malformed) are skipped."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, rest = line.partition(" ")
        name, _, labels = series.partition("{")
        try:
            v = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        keys = [name]
        if name.endswith("_bucket") and 'le="' in labels:
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            try:  # a bound buckets() can order ("+Inf" included); else not a bucket
                float(le)
                keys.append('%s{le="%s"}' % (name, le))
            except ValueError:
                pass
        for k in keys:
            out[k] = out.get(k, 0.0) + v
    return out


def buckets(m0, m1, name):
    """A histogram's cumulative buckets between scrapes m0 and m1 (parsed):
    [(upper bound, observations at or under it)], in order of the bound."""
    pre = name + '_bucket{le="'
    les = [k[len(pre):-2] for k in m1 if k.startswith(pre)]
    return sorted(((float(le), m1[pre + le + '"}'] - m0.get(pre + le + '"}', 0.0)) for le in les),
                  key=lambda b: b[0])


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
    # the steps' rows (batch sizes), all replicas: [[bound, steps at or under]]
    out["step_rows"] = [[le if le != float("inf") else "+Inf", n]
                        for le, n in buckets(m0, m1, "sa_step_rows")]
    return out
