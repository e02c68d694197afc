"""tasks — synthetic audio reasoning tasks with one checkable answer each.

Every example is (clip, question, reasoning, answer): a 16 kHz mono clip,
the user's question, a short chain of thought that refers to what is heard,
and the answer the vote compares. Four tasks:

  count    1-9 beeps (pitch, length, loudness and gaps vary)     -> "3"
           reasoning: each beep in turn with the time it starts
  compare  two tones; which is higher                            -> "first"
           reasoning: each tone's pitch (rounded to a grid), compared
  arith    a spoken problem, "seven plus five" (espeak-ng voices) -> "12"
           reasoning: the words heard, then the sum or difference
  voice    a spoken sentence; is the voice high or low            -> "low"
           reasoning: where the voice's pitch sits

Tones and beeps are synthesised here (numpy); speech comes from espeak-ng,
resampled to 16 kHz by sox, rendered once per (text, voice) and cached in
memory. Everything is drawn from one numpy Generator, so a seed gives the
same examples on every machine with the same espeak-ng (Debian's 1.51).
The clip of each task has a fixed length (silence around the sound), so a
training batch of one task has one shape and the cluster sees the same
samples the model was trained on.

Held-out sets come from seeds the training never uses (train.py draws
training examples from seed * 1000 + worker; `make` refuses those seeds).

CLI (numpy, espeak-ng and sox only; no torch):
    python3 train/tasks.py make --seed 9001 --n 200 --out DIR
writes DIR/NNNN.wav and DIR/manifest.jsonl (file, task, question, answer).
"""
import argparse
import json
import os
import subprocess
import sys
import wave

import numpy as np

SR = 16000
TASKS = ("count", "compare", "arith", "voice")
SECONDS = {"count": 4.0, "compare": 2.0, "arith": 3.0, "voice": 3.0}
QUESTION = {
    "count": "How many beeps do you hear?",
    "compare": "Which tone is higher, the first or the second?",
    "arith": "Solve the spoken problem.",
    "voice": "Is the speaker's voice high or low?",
}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
GRID = [200, 250, 300, 350, 400, 500, 600, 700, 800, 1000, 1200, 1400, 1600, 2000]
SENTENCES = [
    "the cat sat on the mat", "it is a sunny day", "please open the door",
    "the train leaves at noon", "we walked to the river", "a bird sang in the tree",
    "turn left at the corner", "the soup is too hot", "she plays the piano",
    "my phone is on the table", "the dog likes to run", "it will rain tonight",
    "the shop is closed today", "he reads a long book", "the lights are on",
    "we need more paper", "the box is very heavy", "they met at the station",
]
VOICES = ["en-us", "en-gb"]
SPEEDS = [140, 170, 200]
ARITH_PITCH = [30, 50, 70]
LOW_PITCH, HIGH_PITCH = [0, 8, 16], [84, 92, 99]


class SpeechCache:
    """espeak-ng renders, 16 kHz float32, keyed by (text, voice, speed, pitch)."""

    def __init__(self):
        self.cache = {}

    def get(self, text, voice, speed, pitch):
        key = (text, voice, speed, pitch)
        if key not in self.cache:
            es = subprocess.run(
                ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                check=True, capture_output=True).stdout
            raw = subprocess.run(
                # -D: no dither (sox's default dither is random noise: the same
                # seed made different clips, and a run's numbers moved)
                ["sox", "-D", "-t", "wav", "-", "-t", "raw", "-r", str(SR), "-e", "signed",
                 "-b", "16", "-c", "1", "-"], input=es, check=True, capture_output=True).stdout
            x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
            nz = np.nonzero(np.abs(x) > 0.01)[0]  # espeak pads with silence: trim it
            self.cache[key] = x[nz[0]:nz[-1] + 1] if len(nz) else x
        return self.cache[key]


def _tone(rng, f, dur, amp):
    n = int(dur * SR)
    t = np.arange(n) / SR
    ramp = min(n // 4, int(0.01 * SR))  # 10 ms fades: no clicks
    env = np.ones(n, np.float32)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[n - ramp:] = np.linspace(1, 0, ramp)
    ph = rng.uniform(0, 2 * np.pi)
    return (amp * env * np.sin(2 * np.pi * f * t + ph)).astype(np.float32)


def _place(rng, parts, seconds):
    """parts: [(signal, gap_after_s)] -> a clip of `seconds` with the parts
    in order from a random start; returns (clip, [(start, end)] in s)."""
    total = sum(len(p) for p, _ in parts) + int(sum(g for _, g in parts[:-1]) * SR)
    room = int(seconds * SR) - total
    assert room > 0, "parts longer than the clip"
    pos = int(rng.uniform(0.05, 1.0) * min(room, int(0.8 * SR)))
    clip = np.zeros(int(seconds * SR), np.float32)
    starts = []
    for p, g in parts:
        starts.append((pos / SR, (pos + len(p)) / SR))
        clip[pos:pos + len(p)] += p
        pos += len(p) + int(g * SR)
    noise = rng.uniform(0.0, 0.01)
    clip += noise * rng.standard_normal(len(clip)).astype(np.float32)
    return np.clip(clip, -1, 1), starts


def _count(rng, speech):
    n = int(rng.integers(1, 10))
    f = float(np.exp(rng.uniform(np.log(500), np.log(2000))))
    parts = []
    for i in range(n):
        dur = rng.uniform(0.05, 0.12)
        gap = rng.uniform(0.10, 0.26)
        parts.append((_tone(rng, f * rng.uniform(0.97, 1.03), dur, rng.uniform(0.2, 0.7)), gap))
    clip, spans = _place(rng, parts, SECONDS["count"])
    steps = "\n".join(f"beep {i + 1} at {s:.1f} s" for i, (s, _) in enumerate(spans))
    events = [(a, b, EVENT["beep"]) for a, b in spans]
    word = "beep" if n == 1 else "beeps"
    if rng.random() < 0.5:
        reasoning = f"I listen for beeps.\n{steps}\nThat is all: {n} {word}."
    else:
        reasoning = (f"I listen to the whole clip and count each beep where it starts.\n{steps}\n"
                     f"No more beeps after that, so I heard {n} {word} in total.")
    return clip, reasoning, str(n), events


def _compare(rng, speech):
    i, j = rng.choice(len(GRID), 2, replace=False)
    while abs(int(i) - int(j)) < 2:
        i, j = rng.choice(len(GRID), 2, replace=False)
    fa, fb = GRID[i], GRID[j]
    parts = [(_tone(rng, fa * rng.uniform(0.98, 1.02), rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.7)),
              rng.uniform(0.15, 0.35)),
             (_tone(rng, fb * rng.uniform(0.98, 1.02), rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.7)), 0)]
    clip, spans = _place(rng, parts, SECONDS["compare"])
    events = [(a, b, EVENT["tone"] + g) for (a, b), g in zip(spans, (i, j))]
    hi = "first" if fa > fb else "second"
    rel = "more" if fa > fb else "less"
    reasoning = (f"The first tone is about {fa} Hz.\nThe second tone is about {fb} Hz.\n"
                 f"{fa} is {rel} than {fb}, so the {hi} tone is higher.")
    if rng.random() < 0.5:
        reasoning = f"There are two tones, one after the other.\n{reasoning}"
    return clip, reasoning, hi, events


def _arith(rng, speech):
    a, b = int(rng.integers(0, 10)), int(rng.integers(0, 10))
    op = "plus" if rng.random() < 0.5 else "minus"
    if op == "minus" and b > a:
        a, b = b, a
    v, s, p = VOICES[rng.integers(2)], SPEEDS[rng.integers(3)], ARITH_PITCH[rng.integers(3)]
    amp = rng.uniform(0.5, 1.0)
    parts = [(amp * speech.get(w, v, s, p), rng.uniform(0.05, 0.25))
             for w in (WORDS[a], op, WORDS[b])]
    clip, spans = _place(rng, parts, SECONDS["arith"])
    cls = [EVENT["word"] + a, EVENT[op], EVENT["word"] + b]
    events = [(x, y, c) for (x, y), c in zip(spans, cls)]
    r = a + b if op == "plus" else a - b
    sym = "+" if op == "plus" else "-"
    if rng.random() < 0.5:
        reasoning = f"I hear: {WORDS[a]} {op} {WORDS[b]}.\n{a} {sym} {b} = {r}."
    else:
        reasoning = (f"I hear three words: {WORDS[a]}, then {op}, then {WORDS[b]}.\n"
                     f"So the problem is {a} {sym} {b}.\n{a} {op} {b} is {r}.")
    return clip, reasoning, str(r), events


def _voice(rng, speech):
    high = rng.random() < 0.5
    p = (HIGH_PITCH if high else LOW_PITCH)[rng.integers(3)]
    text = SENTENCES[rng.integers(len(SENTENCES))]
    v, s = VOICES[rng.integers(2)], SPEEDS[rng.integers(3)]
    sig = speech.get(text, v, s, p)
    if len(sig) > int(2.6 * SR):  # a fast reading fits; a slow one is cut at a pause-free point
        sig = sig[:int(2.6 * SR)]
    clip, spans = _place(rng, [(rng.uniform(0.5, 1.0) * sig, 0)], SECONDS["voice"])
    events = [(spans[0][0], spans[0][1], EVENT["high" if high else "low"])]
    word = "high" if high else "low"
    sounds = "thin and bright" if high else "deep and dark"
    if rng.random() < 0.5:
        reasoning = f"The voice sounds {sounds}.\nIts pitch is {word}."
    else:
        reasoning = (f"I hear one person reading a short sentence.\nThe voice sounds {sounds}.\n"
                     f"Compared with a typical voice, its pitch is {word}.")
    return clip, reasoning, word, events


# classes of what sounds when (frame_labels): training's auxiliary target
EVENT = {"beep": 1, "tone": 2, "word": 2 + len(GRID), "plus": 12 + 2 + len(GRID),
         "minus": 13 + 2 + len(GRID), "high": 14 + 2 + len(GRID), "low": 15 + 2 + len(GRID)}
N_EVENTS = 16 + 2 + len(GRID)

MAKERS = {"count": _count, "compare": _compare, "arith": _arith, "voice": _voice}


def example(rng, task, speech):
    """One example of `task`: dict(task, clip, question, reasoning, answer)."""
    clip, reasoning, answer, events = MAKERS[task](rng, speech)
    return {"task": task, "clip": clip, "question": QUESTION[task],
            "reasoning": reasoning, "answer": answer, "events": events}


def frame_labels(ex, n_rows, hop_s=0.08):
    """The event class (EVENT, 0 = nothing) of each audio row: the class of
    an event covering a third of the row's 80 ms or more; a beep marks only
    the row where it starts."""
    lab = np.zeros(n_rows, np.int64)
    for a, b, c in ex["events"]:
        if c == EVENT["beep"]:  # beeps: their onsets (counting needs them apart)
            if int(a / hop_s) < n_rows:
                lab[int(a / hop_s)] = c
            continue
        for r in range(int(a / hop_s), min(n_rows, int(b / hop_s) + 1)):
            if min(b, (r + 1) * hop_s) - max(a, r * hop_s) >= hop_s / 3:
                lab[r] = c
    return lab


def target_text(ex):
    """What the assistant writes after the prompt's '<think>\\n'."""
    return f"{ex['reasoning']}\n</think>\n{ex['answer']}"


def write_wav(path, clip):
    pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())


TRAIN_SEED_BASE = 1000  # training streams use seeds 1000..1999 (train.py)


def make_set(seed, n, out, tasks=TASKS):
    """n held-out examples, tasks in turn, written as WAVs and a manifest."""
    if TRAIN_SEED_BASE <= seed < 2 * TRAIN_SEED_BASE:
        raise SystemExit(f"tasks: seed {seed} is one training uses; pick another")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    speech = SpeechCache()
    rows = []
    for i in range(n):
        ex = example(rng, tasks[i % len(tasks)], speech)
        name = f"{i:04d}.wav"
        write_wav(os.path.join(out, name), ex["clip"])
        rows.append({"file": name, "task": ex["task"], "question": ex["question"],
                     "answer": ex["answer"], "reasoning": ex["reasoning"]})
    with open(os.path.join(out, "manifest.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def main():
    ap = argparse.ArgumentParser(description="synthetic audio reasoning tasks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a held-out set (WAVs + manifest.jsonl)")
    m.add_argument("--seed", type=int, required=True)
    m.add_argument("--n", type=int, required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--tasks", default=",".join(TASKS), help="comma list (default all)")
    s = sub.add_parser("show", help="print a few examples' text")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--n", type=int, default=4)
    a = ap.parse_args()
    if a.cmd == "make":
        tasks = tuple(t for t in a.tasks.split(",") if t)
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks:
            raise SystemExit(f"tasks: unknown task(s) {bad}; known: {', '.join(TASKS)}")
        rows = make_set(a.seed, a.n, a.out, tasks)
        print(f"tasks: {len(rows)} clips in {a.out}", file=sys.stderr)
    else:
        rng = np.random.default_rng(a.seed)
        sp = SpeechCache()
        for i in range(a.n):
            ex = example(rng, TASKS[i % len(TASKS)], sp)
            print(f"[{ex['task']}] {ex['question']}\n<think>\n{target_text(ex)}\n")


if __name__ == "__main__":
    main()
