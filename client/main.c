/*
 * sa-client — the command line client of sa-cluster.
 *
 *   sa-client submit clip.wav [options]   stream the reasoning and the answer
 *   sa-client status [--json]             encoders, replicas, stages, load, KV
 *
 * Talks to sa-coordinator over the RPC layer (core/rpc.h). Exits 0 on
 * success, 1 when the cluster answered with an error, 2 for bad usage.
 */
#include "log.h"
#include "sa_time.h"
#include "rpc.h"
#include "security.h"
#include "sa.pb-c.h"
#include "sa_error.h"
#include "common.h"
#include "stream.h"

#include <cjson/cJSON.h>
#include <sodium.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define MAX_AUDIO_BYTES (64u << 20)

static void usage(FILE *f) {
  fprintf(f,
          "usage: sa-client submit AUDIO [options]\n"
          "       sa-client status [--json] [--coordinator ADDR]\n"
          "       sa-client drain TARGET [--migrate] [--no-wait] [--timeout S]\n"
          "       sa-client undrain TARGET\n"
          "\n"
          "submit options:\n"
          "  --prompt TEXT          text after the audio (default: none)\n"
          "  --prompt-file FILE     the same, read from FILE (for long prompts)\n"
          "  --system TEXT          system prompt (default: the coordinator's)\n"
          "  --max-tokens N         tokens per chain, reasoning + answer (default 256)\n"
          "  --temperature T        0 = greedy (default 0)\n"
          "  --top-p P, --top-k K, --min-p P, --repetition-penalty R\n"
          "  --seed S               RNG seed (default 0)\n"
          "  -n N                   parallel reasoning chains, voted on (default 1); shows a\n"
          "                         line per chain (redrawn in place on a terminal)\n"
          "  --vote RULE            majority: stop once the leader cannot be overtaken;\n"
          "                         window:K: stop once K chains in a row agree;\n"
          "                         none: run every chain, no vote (default majority)\n"
          "  --think-budget N       reasoning tokens per chain before </think> is forced\n"
          "  --no-audio             send only --prompt (AUDIO is omitted)\n"
          "  --json                 one JSON object per event on stdout\n"
          "  --quiet-reasoning      do not print the reasoning, only the answer\n"
          "  --timeout S            give up after S seconds (default 600)\n"
          "  --request-id ID        the request's id (default: a random one). If the\n"
          "                         coordinator goes away, sa-client asks it again for\n"
          "                         the request from the text it holds (a coordinator\n"
          "                         with --state resumes it after a restart)\n"
          "drain: TARGET is a replica's name or a stage's or encoder's node id (see\n"
          "status). New work stops going there; running requests finish in place, or\n"
          "with --migrate move to other replicas at once (re-prefill, the same tokens).\n"
          "Waits until nothing runs there (then its processes may be stopped) unless\n"
          "--no-wait; --timeout S (default 600). undrain lets work go there again.\n"
          "Both need an operator key (sa-keys gen NAME --role operator).\n"
          "common:\n"
          "  --coordinator ADDR     default $SA_COORDINATOR or " SA_DEFAULT_COORDINATOR "\n"
          SA_SEC_USAGE
          "                         (the coordinator's key is the one key of role\n"
          "                         coordinator in the --allow folder)\n"
          "  -h, --help\n");
}

/* ------------------------------------------------------------------ submit */

typedef struct {
  uv_loop_t *loop;
  sa_rpc_channel_t *ch;
  uint64_t call_id;
  bool json, quiet_reasoning, tty;
  int n_chains;
  int last_kind[64];      /* per chain: -1 none yet, else DeltaKind printed last */
  bool at_heading[64];    /* per chain: nothing printed since the last heading */
  int64_t tokens[64];
  /* -n > 1: one progress line per chain */
  bool live;              /* redraw the chain lines in place (stdout is a TTY) */
  int drawn;              /* lines of the live block on screen */
  bool dirty;
  bool answering[64];
  int finish[64];         /* Sa__FinishReason, 0 = running */
  bool printed[64];       /* non-TTY: its line was printed */
  char answer[64][96];
  char leader[96];
  int leader_votes;
  uv_timer_t redraw;
  int exit_code;
  bool done;
  uv_signal_t sigint;
  uv_timer_t progress;
  double t0;
  bool got_first;
  char label[256];
  char request_id[64];
  bool cancelled; /* Ctrl-C */
  sa_submit_stream_t *stream; /* resumed across coordinator restarts */
} submit_t;

/* ------------------------------------------- -n > 1: chain lines and vote */

/* Copies src for one display line: cut on a UTF-8 boundary with "..." when
 * longer than cap, control characters (newlines, ESC) shown as spaces. */
static void copy_trunc(char *dst, size_t cap, const char *src) {
  size_t n = strlen(src);
  if (n >= cap) {
    n = cap - 4;
    while (n > 0 && ((unsigned char)src[n] & 0xc0) == 0x80)
      n--;
    memcpy(dst, src, n);
    memcpy(dst + n, "...", 4);
  } else {
    memcpy(dst, src, n + 1);
  }
  for (char *p = dst; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      *p = ' ';
}

static void chain_line(const submit_t *s, int c, char *buf, size_t cap) {
  const char *state = s->finish[c] ? sa_client_finish_name(s->finish[c])
                                   : s->answering[c] ? "answering" : "thinking";
  int n = snprintf(buf, cap, "chain %2d  %-16s %6lld tokens", c, state, (long long)s->tokens[c]);
  if (s->finish[c] && n > 0 && (size_t)n < cap)
    snprintf(buf + n, cap - (size_t)n, "  answer: %s", s->answer[c][0] ? s->answer[c] : "(none)");
}

/* TTY: redraws the block of chain lines (and a vote line) in place. */
static void draw_live(submit_t *s) {
  if (!s->live)
    return;
  if (s->drawn > 0)
    printf("\033[%dA", s->drawn);
  char line[256];
  int running = 0;
  for (int c = 0; c < s->n_chains && c < 64; c++) {
    chain_line(s, c, line, sizeof line);
    printf("\r\033[2K%s\n", line);
    running += s->finish[c] == 0;
  }
  if (s->leader_votes > 0)
    printf("\r\033[2K%d running, leading: %s (%d vote%s)\n", running, s->leader,
           s->leader_votes, s->leader_votes == 1 ? "" : "s");
  else
    printf("\r\033[2K%d running, no answer yet\n", running);
  s->drawn = (s->n_chains < 64 ? s->n_chains : 64) + 1;
  s->dirty = false;
  fflush(stdout);
}

static void on_redraw(uv_timer_t *t) {
  submit_t *s = t->data;
  if (s->dirty)
    draw_live(s);
}

/* Non-TTY: one line per chain as it finishes. */
static void print_chain_line(submit_t *s, int c) {
  if (s->live || c < 0 || c >= 64 || s->printed[c])
    return;
  char line[256];
  chain_line(s, c, line, sizeof line);
  printf("%s\n", line);
  fflush(stdout);
  s->printed[c] = true;
}

static void print_json_event(const Sa__SubmitEvent *ev) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "request_id", ev->request_id);
  if (ev->payload_case == SA__SUBMIT_EVENT__PAYLOAD_DELTA) {
    cJSON_AddStringToObject(o, "type", "delta");
    cJSON_AddNumberToObject(o, "chain", ev->delta->chain);
    cJSON_AddStringToObject(o, "kind",
                            ev->delta->kind == SA__DELTA_KIND__DELTA_ANSWER ? "answer" : "reasoning");
    cJSON_AddStringToObject(o, "text", ev->delta->text);
    cJSON_AddNumberToObject(o, "offset", (double)ev->delta->offset);
  } else if (ev->payload_case == SA__SUBMIT_EVENT__PAYLOAD_PROGRESS) {
    const Sa__Progress *p = ev->progress;
    cJSON_AddStringToObject(o, "type", "progress");
    cJSON_AddStringToObject(o, "stage", p->stage);
    cJSON_AddNumberToObject(o, "prompt_tokens", (double)p->prompt_tokens);
    cJSON_AddNumberToObject(o, "audio_tokens", (double)p->audio_tokens);
    cJSON_AddNumberToObject(o, "chains_running", p->chains_running);
    cJSON_AddNumberToObject(o, "chains_finished", p->chains_finished);
    cJSON_AddNumberToObject(o, "tokens_generated", (double)p->tokens_generated);
    if (!strcmp(p->stage, "chain_done")) {
      cJSON_AddNumberToObject(o, "chain", p->chain);
      cJSON_AddStringToObject(o, "finish_reason", sa_client_finish_name(p->finish_reason));
      cJSON_AddStringToObject(o, "chain_answer", p->chain_answer);
      cJSON_AddNumberToObject(o, "chain_tokens", p->chain_tokens);
      cJSON_AddStringToObject(o, "leading_answer", p->leading_answer);
      cJSON_AddNumberToObject(o, "leading_votes", p->leading_votes);
    }
  } else if (ev->payload_case == SA__SUBMIT_EVENT__PAYLOAD_FINAL) {
    const Sa__FinalResult *f = ev->final;
    cJSON_AddStringToObject(o, "type", "final");
    cJSON_AddStringToObject(o, "answer", f->answer);
    cJSON_AddNumberToObject(o, "votes", f->votes);
    cJSON_AddNumberToObject(o, "prompt_tokens", (double)f->prompt_tokens);
    cJSON_AddNumberToObject(o, "audio_tokens", (double)f->audio_tokens);
    cJSON_AddNumberToObject(o, "tokens_generated", (double)f->tokens_generated);
    cJSON_AddNumberToObject(o, "tokens_saved", (double)f->tokens_saved);
    cJSON_AddNumberToObject(o, "elapsed_s", f->elapsed_s);
    cJSON_AddNumberToObject(o, "time_to_first_token_s", f->time_to_first_token_s);
    cJSON *chains = cJSON_AddArrayToObject(o, "chains");
    for (size_t i = 0; i < f->n_chains; i++) {
      const Sa__ChainResult *c = f->chains[i];
      cJSON *co = cJSON_CreateObject();
      cJSON_AddNumberToObject(co, "chain", c->chain);
      cJSON_AddStringToObject(co, "answer", c->answer);
      cJSON_AddStringToObject(co, "normalized_answer", c->normalized_answer);
      cJSON_AddStringToObject(co, "finish_reason", sa_client_finish_name(c->finish_reason));
      cJSON_AddNumberToObject(co, "reasoning_tokens", c->reasoning_tokens);
      cJSON_AddNumberToObject(co, "answer_tokens", c->answer_tokens);
      char seed[24];
      snprintf(seed, sizeof seed, "%llu", (unsigned long long)c->seed);
      cJSON_AddStringToObject(co, "seed", seed); /* a string: 64 bits */
      cJSON *toks = cJSON_AddArrayToObject(co, "tokens");
      for (size_t k = 0; k < c->n_tokens; k++)
        cJSON_AddItemToArray(toks, cJSON_CreateNumber(c->tokens[k]));
      cJSON_AddItemToArray(chains, co);
    }
  }
  char *s = cJSON_PrintUnformatted(o);
  if (s) {
    puts(s);
    fflush(stdout);
    free(s);
  }
  cJSON_Delete(o);
}

static void on_event(void *user, Sa__SubmitEvent *ev) {
  submit_t *s = user;
  if (s->json) {
    print_json_event(ev);
    return;
  }
  const char *dim = s->tty ? "\033[2m" : "", *bold = s->tty ? "\033[1m" : "",
             *reset = s->tty ? "\033[0m" : "";
  switch (ev->payload_case) {
  case SA__SUBMIT_EVENT__PAYLOAD_PROGRESS:
    if (!strcmp(ev->progress->stage, "chain_done") && s->n_chains > 1) {
      const Sa__Progress *p = ev->progress;
      int c = p->chain;
      if (c >= 0 && c < 64) {
        s->finish[c] = p->finish_reason ? (int)p->finish_reason : 1;
        s->tokens[c] = p->chain_tokens;
        copy_trunc(s->answer[c], sizeof s->answer[c], p->chain_answer);
      }
      copy_trunc(s->leader, sizeof s->leader, p->leading_answer);
      s->leader_votes = p->leading_votes;
      if (s->live)
        draw_live(s);
      else
        print_chain_line(s, c);
    } else if (!strcmp(ev->progress->stage, "encoded"))
      fprintf(stderr, "sa-client: audio encoded: %lld audio tokens, prompt %lld tokens; prefilling...\n",
              (long long)ev->progress->audio_tokens, (long long)ev->progress->prompt_tokens);
    break;
  case SA__SUBMIT_EVENT__PAYLOAD_DELTA: {
    const Sa__SubmitEvent__Delta *d = ev->delta;
    int c = d->chain >= 0 && d->chain < 64 ? d->chain : 0;
    if (!s->got_first) {
      s->got_first = true;
      fprintf(stderr, "sa-client: first token after %.2f s\n", sa_now_s() - s->t0);
    }
    s->tokens[c] += d->token_count;
    if (s->n_chains > 1) {
      /* several chains: a line per chain (the reasoning is not printed) */
      if (d->kind == SA__DELTA_KIND__DELTA_ANSWER)
        s->answering[c] = true;
      s->dirty = true;
      break;
    }
    if (d->kind == SA__DELTA_KIND__DELTA_REASONING && s->quiet_reasoning)
      break;
    if (s->last_kind[c] != (int)d->kind) {
      printf("%s%s%s\n", s->last_kind[c] >= 0 ? "\n" : "",
             d->kind == SA__DELTA_KIND__DELTA_ANSWER ? "── answer ──" : "── reasoning ──",
             "");
      s->last_kind[c] = (int)d->kind;
      s->at_heading[c] = true;
    }
    /* the heading ends a line: the newlines the model writes after
       "<think>" or "</think>" would only leave a blank one */
    const char *text = d->text;
    if (s->at_heading[c])
      text += strspn(text, "\n");
    if (*text)
      s->at_heading[c] = false;
    printf("%s%s%s", d->kind == SA__DELTA_KIND__DELTA_ANSWER ? bold : dim, text, reset);
    fflush(stdout);
    break;
  }
  case SA__SUBMIT_EVENT__PAYLOAD_FINAL: {
    const Sa__FinalResult *f = ev->final;
    if (s->n_chains > 1) {
      for (size_t i = 0; i < f->n_chains; i++) {
        const Sa__ChainResult *c = f->chains[i];
        if (c->chain < 0 || c->chain >= 64)
          continue;
        s->finish[c->chain] = c->finish_reason ? (int)c->finish_reason : 1;
        s->tokens[c->chain] = (int64_t)c->n_tokens;
        copy_trunc(s->answer[c->chain], sizeof s->answer[c->chain], c->normalized_answer);
      }
      if (s->live) { /* the final state of the block, then the vote below it */
        s->leader[0] = '\0';
        s->leader_votes = 0;
        draw_live(s);
        printf("\033[1A\r\033[2K");
      } else {
        for (size_t i = 0; i < f->n_chains; i++) /* the chains not printed yet */
          print_chain_line(s, f->chains[i]->chain);
      }
      char shown[256];
      copy_trunc(shown, sizeof shown, f->answer);
      if (f->votes > 0)
        printf("%svote: %s%s (%d of %zu chains agree)\n", bold, shown, reset, f->votes,
               f->n_chains);
      else
        printf("%svote: %s%s\n", bold,
               f->answer[0] ? f->answer : "(no vote: --vote none, or no chain answered)", reset);
    } else {
      printf("\n");
    }
    fflush(stdout);
    fprintf(stderr,
            "sa-client: done: %lld tokens generated (%lld saved by early stop), prompt %lld "
            "tokens (%lld audio), %.2f s, first token %.2f s\n",
            (long long)f->tokens_generated, (long long)f->tokens_saved, (long long)f->prompt_tokens,
            (long long)f->audio_tokens, f->elapsed_s, f->time_to_first_token_s);
    break;
  }
  default:
    break;
  }
}

static void finish(submit_t *s) {
  s->done = true;
  uv_close((uv_handle_t *)&s->sigint, NULL);
  uv_close((uv_handle_t *)&s->progress, NULL);
  uv_close((uv_handle_t *)&s->redraw, NULL);
  sa_submit_stream_free(s->stream);
  s->stream = NULL;
  sa_rpc_channel_destroy(&s->ch);
}

static void on_retry(void *user, int status, const char *msg, double backoff_s, bool resubmit) {
  submit_t *s = user;
  if (resubmit)
    fprintf(stderr, "sa-client: the coordinator does not have request %s; sending it again\n",
            s->request_id);
  else
    fprintf(stderr, "\nsa-client: %s (%s); resuming request %s in %.1f s\n",
            sa_status_name(status), msg[0] ? msg : "no message", s->request_id, backoff_s);
}

static void on_end(void *user, int status, const char *msg) {
  submit_t *s = user;
  if (status != SA_STATUS_OK) {
    if (status == SA_STATUS_UNAVAILABLE && !msg[0])
      fprintf(stderr, "\nsa-client: the coordinator at %s is unavailable (is the cluster up? "
                      "sa-cluster up)\n", s->label);
    else if (!(status == SA_STATUS_CANCELLED && s->cancelled))
      fprintf(stderr, "\nsa-client: error: %s: %s\n", sa_status_name(status),
              msg[0] ? msg : "(no message)");
    if (!s->exit_code)
      s->exit_code = 1;
  }
  if (sa_submit_stream_gaps(s->stream))
    s->exit_code = 1;
  finish(s);
}

static void on_sigint(uv_signal_t *h, int sig) {
  submit_t *s = h->data;
  (void)sig;
  fprintf(stderr, "\nsa-client: cancelling\n");
  s->cancelled = true;
  s->exit_code = 130;
  sa_submit_stream_cancel(s->stream);
}

static void on_progress(uv_timer_t *t) {
  submit_t *s = t->data;
  if (!s->got_first && !s->json)
    fprintf(stderr, "sa-client: waiting... %.0f s\n", sa_now_s() - s->t0);
}

static int read_all(const char *path, uint8_t **out, size_t *len) {
  char err[512];
  if (sa_client_read_file(path, MAX_AUDIO_BYTES, out, len, err, sizeof err)) {
    fprintf(stderr, "sa-client: %s\n", err);
    return -1;
  }
  return 0;
}

/* Command-line numbers: the whole argument must be the number, in range;
 * anything else exits 2 with the option's name (a CLI, so exiting is fine). */
static float parse_float(const char *s, const char *name) {
  char *end;
  errno = 0;
  float v = strtof(s, &end);
  if (end == s || *end || errno || !isfinite(v)) {
    fprintf(stderr, "sa-client: %s must be a finite number (got '%s')\n", name, s);
    exit(2);
  }
  return v;
}

static int parse_int(const char *s, const char *name, long lo, long hi) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (end == s || *end || errno || v < lo || v > hi) {
    fprintf(stderr, "sa-client: %s must be an integer in [%ld, %ld] (got '%s')\n", name, lo,
            hi, s);
    exit(2);
  }
  return (int)v;
}

static uint64_t parse_u64(const char *s, const char *name) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s || *end || errno || s[0] == '-') {
    fprintf(stderr, "sa-client: %s must be an integer in [0, 2^64) (got '%s')\n", name, s);
    exit(2);
  }
  return (uint64_t)v;
}

/* Reads a text file for --prompt-file (NUL-terminated; caller frees).
 * NULL after a message: unreadable, too large, or holding a NUL byte. */
static char *read_text(const char *path) {
  uint8_t *buf;
  size_t len;
  if (read_all(path, &buf, &len))
    return NULL;
  char *text = (char *)buf; /* NUL-terminated by the reader */
  if (strlen(text) != len) {
    fprintf(stderr, "sa-client: %s holds a NUL byte; a prompt is text\n", path);
    free(text);
    return NULL;
  }
  return text;
}

static int cmd_submit(int argc, char **argv) {
  static const struct option longopts[] = {
      {"prompt", required_argument, 0, 'p'},
      {"prompt-file", required_argument, 0, 'F'},
      {"system", required_argument, 0, 's'},
      {"max-tokens", required_argument, 0, 'M'},
      {"temperature", required_argument, 0, 't'},
      {"top-p", required_argument, 0, 'P'},
      {"top-k", required_argument, 0, 'K'},
      {"min-p", required_argument, 0, 'm'},
      {"repetition-penalty", required_argument, 0, 'r'},
      {"seed", required_argument, 0, 'S'},
      {"vote", required_argument, 0, 'v'},
      {"think-budget", required_argument, 0, 'b'},
      {"no-audio", no_argument, 0, 'A'},
      {"json", no_argument, 0, 'j'},
      {"quiet-reasoning", no_argument, 0, 'q'},
      {"timeout", required_argument, 0, 'T'},
      {"coordinator", required_argument, 0, 'c'},
      {"request-id", required_argument, 0, 'I'},
      {"help", no_argument, 0, 'h'},
      SA_SEC_LONGOPTS,
      {0, 0, 0, 0}};
  sa_sec_args_t sa = {0};
  Sa__SubmitRequest rq = SA__SUBMIT_REQUEST__INIT;
  char request_id[64];
  Sa__SamplingParams sp = SA__SAMPLING_PARAMS__INIT;
  rq.sampling = &sp;
  rq.max_tokens = 256;
  rq.n = 1;
  const char *coord = NULL;
  char *prompt_file = NULL; /* --prompt-file's text, until the request is packed */
  bool json = false, quiet = false, no_audio = false;
  double timeout_s = 600;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "n:h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'p': rq.prompt = optarg; break;
    case 'F':
      free(prompt_file);
      if (!(prompt_file = read_text(optarg)))
        return 2;
      rq.prompt = prompt_file;
      break;
    case 's': rq.system = optarg; break;
    case 'M': rq.max_tokens = parse_int(optarg, "--max-tokens", 1, INT32_MAX); break;
    case 't': sp.temperature = parse_float(optarg, "--temperature"); break;
    case 'P': sp.top_p = parse_float(optarg, "--top-p"); break;
    case 'K': sp.top_k = parse_int(optarg, "--top-k", 0, INT32_MAX); break;
    case 'm': sp.min_p = parse_float(optarg, "--min-p"); break;
    case 'r': sp.repetition_penalty = parse_float(optarg, "--repetition-penalty"); break;
    case 'S': sp.seed = parse_u64(optarg, "--seed"); break;
    case 'n': rq.n = parse_int(optarg, "-n", 1, 1024); break;
    case 'v':
      if (!strcmp(optarg, "majority"))
        rq.vote_rule = SA__VOTE_RULE__VOTE_MAJORITY;
      else if (!strcmp(optarg, "none"))
        rq.vote_rule = SA__VOTE_RULE__VOTE_NONE;
      else if (!strncmp(optarg, "window:", 7)) {
        rq.vote_rule = SA__VOTE_RULE__VOTE_FIRST_K_AGREE;
        rq.vote_k = parse_int(optarg + 7, "--vote window:K", 1, 1024);
      } else {
        fprintf(stderr, "sa-client: --vote must be majority, window:K or none\n");
        return 2;
      }
      break;
    case 'b': rq.think_budget = parse_int(optarg, "--think-budget", 0, INT32_MAX); break;
    case 'A': no_audio = true; break;
    case 'j': json = true; break;
    case 'q': quiet = true; break;
    case 'T':
      timeout_s = parse_float(optarg, "--timeout");
      if (!(timeout_s > 0 && timeout_s <= 1e6)) {
        fprintf(stderr, "sa-client: --timeout must be in (0, 1e6] seconds\n");
        return 2;
      }
      break;
    case 'c': coord = optarg; break;
    case 'I':
      if (!optarg[0] || strlen(optarg) >= sizeof request_id) {
        fprintf(stderr, "sa-client: --request-id must be 1..63 bytes\n");
        return 2;
      }
      rq.request_id = optarg;
      break;
    case 'h': usage(stdout); return 0;
    default:
      if (sa_sec_args_take(&sa, opt, optarg))
        break;
      usage(stderr);
      return 2;
    }
  }
  if (!rq.request_id || !rq.request_id[0]) { /* ours, so that we can resume it */
    uint8_t rnd[12];
    randombytes_buf(rnd, sizeof rnd);
    char hex[2 * sizeof rnd + 1];
    sodium_bin2hex(hex, sizeof hex, rnd, sizeof rnd);
    snprintf(request_id, sizeof request_id, "cli-%s", hex);
    rq.request_id = request_id;
  }
  static sa_sec_t sec;
  sa_rpc_opts_t o;
  sa_rpc_opts_default(&o);
  if (sa_client_security("sa-client", &sa, &sec, &o, false))
    return 2;
  uint8_t *audio = NULL;
  size_t audio_len = 0;
  const char *path = optind < argc ? argv[optind] : NULL;
  if (!no_audio) {
    if (!path) {
      fprintf(stderr, "sa-client: submit needs an audio file (or --no-audio --prompt TEXT)\n");
      return 2;
    }
    if (read_all(path, &audio, &audio_len))
      return 1;
  } else if (!rq.prompt || !rq.prompt[0]) {
    fprintf(stderr, "sa-client: --no-audio needs --prompt TEXT\n");
    return 2;
  }
  rq.audio.data = audio;
  rq.audio.len = audio_len;
  size_t len = sa__submit_request__get_packed_size(&rq);
  uint8_t *buf = malloc(len);
  if (!buf) {
    free(audio);
    return 1;
  }
  sa__submit_request__pack(&rq, buf);
  free(audio);

  static submit_t s;
  memset(&s, 0, sizeof s);
  s.loop = uv_default_loop();
  s.json = json;
  s.quiet_reasoning = quiet;
  s.tty = isatty(STDOUT_FILENO);
  s.n_chains = rq.n;
  s.live = !json && rq.n > 1 && s.tty && getenv("TERM") && strcmp(getenv("TERM"), "dumb") != 0;
  s.t0 = sa_now_s();
  snprintf(s.request_id, sizeof s.request_id, "%s", rq.request_id);
  free(prompt_file);
  for (int i = 0; i < 64; i++)
    s.last_kind[i] = -1;
  const char *addr = sa_client_coordinator_addr(coord);
  snprintf(s.label, sizeof s.label, "%s", addr);
  o.max_msg_bytes = MAX_AUDIO_BYTES + (1u << 20);
  int rc = sa_rpc_channel_new(s.loop, addr, &o, &s.ch);
  if (rc) {
    fprintf(stderr, "sa-client: cannot connect to %s: %s\n", addr, sa_strerror(rc));
    free(buf);
    return 1;
  }
  if (!json)
    fprintf(stderr, "sa-client: sending %s (%zu KiB) to %s as request %s\n",
            path ? path : "prompt", audio_len / 1024, addr, s.request_id);
  static const sa_submit_stream_cbs_t cbs = {on_event, on_end, on_retry};
  rc = sa_submit_stream_start(s.loop, s.ch, s.request_id, buf, len, rq.n, s.t0 + timeout_s, &cbs,
                              &s, &s.stream);
  free(buf);
  if (rc) {
    fprintf(stderr, "sa-client: cannot submit: %s\n", sa_strerror(rc));
    sa_rpc_channel_destroy(&s.ch);
    uv_run(s.loop, UV_RUN_DEFAULT);
    return 1;
  }
  uv_signal_init(s.loop, &s.sigint);
  s.sigint.data = &s;
  uv_signal_start(&s.sigint, on_sigint, SIGINT);
  uv_timer_init(s.loop, &s.progress);
  s.progress.data = &s;
  uv_timer_start(&s.progress, on_progress, 5000, 5000);
  uv_timer_init(s.loop, &s.redraw);
  s.redraw.data = &s;
  if (s.live) {
    draw_live(&s);
    uv_timer_start(&s.redraw, on_redraw, 100, 100);
  }
  uv_run(s.loop, UV_RUN_DEFAULT);
  uv_loop_close(s.loop);
  sa_sec_close(&sec);
  return s.exit_code;
}

/* ------------------------------------------------------------------ status */

static int cmd_status(int argc, char **argv) {
  static const struct option longopts[] = {{"json", no_argument, 0, 'j'},
                                           {"coordinator", required_argument, 0, 'c'},
                                           {"help", no_argument, 0, 'h'},
                                           SA_SEC_LONGOPTS,
                                           {0, 0, 0, 0}};
  sa_sec_args_t sa = {0};
  const char *coord = NULL;
  bool json = false;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'j': json = true; break;
    case 'c': coord = optarg; break;
    case 'h': usage(stdout); return 0;
    default:
      if (sa_sec_args_take(&sa, opt, optarg))
        break;
      usage(stderr);
      return 2;
    }
  }
  sa_sec_t sec;
  sa_rpc_opts_t ro;
  sa_rpc_opts_default(&ro);
  if (sa_client_security("sa-client", &sa, &sec, &ro, false))
    return 2;
  const char *addr = sa_client_coordinator_addr(coord);
  Sa__StatusRequest rq = SA__STATUS_REQUEST__INIT;
  uint8_t buf[16];
  size_t len = sa__status_request__pack(&rq, buf);
  sa_rpc_reply_t *rep = NULL;
  int rc = sa_rpc_call_sync(addr, &ro, "Coordinator/Status", buf, len, NULL, 0, 3000, &rep);
  sa_sec_close(&sec);
  if (rc) {
    fprintf(stderr, "sa-client: cannot reach %s: %s\n", addr, sa_strerror(rc));
    return 1;
  }
  if (rep->status != SA_STATUS_OK) {
    fprintf(stderr, "sa-client: %s: %s: %s%s\n", addr, sa_status_name(rep->status),
            rep->status_msg ? rep->status_msg : "",
            rep->status == SA_STATUS_DEADLINE_EXCEEDED || rep->status == SA_STATUS_UNAVAILABLE
                ? " (is the cluster up? sa-cluster up)"
                : "");
    sa_rpc_reply_free(&rep);
    return 1;
  }
  Sa__StatusResponse *st = sa__status_response__unpack(NULL, rep->body_len, rep->body);
  sa_rpc_reply_free(&rep);
  if (!st) {
    fprintf(stderr, "sa-client: malformed StatusResponse\n");
    return 1;
  }
  if (json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", st->model_id);
    cJSON_AddNumberToObject(o, "replicas_ready", st->replicas_ready);
    cJSON_AddNumberToObject(o, "requests_running", st->requests_running);
    cJSON_AddNumberToObject(o, "requests_queued", st->requests_queued);
    cJSON_AddNumberToObject(o, "chains_running", st->chains_running);
    cJSON_AddNumberToObject(o, "forks_total", (double)st->forks_total);
    cJSON_AddNumberToObject(o, "requests_total", (double)st->requests_total);
    cJSON_AddBoolToObject(o, "insecure", st->insecure);
    cJSON_AddNumberToObject(o, "handshakes_refused", (double)st->handshakes_refused);
    cJSON *ws = cJSON_AddArrayToObject(o, "workers");
    for (size_t i = 0; i < st->n_workers; i++) {
      const Sa__WorkerInfo *w = st->workers[i];
      cJSON *wo = cJSON_CreateObject();
      cJSON_AddStringToObject(wo, "node_id", w->node_id);
      cJSON_AddStringToObject(wo, "role", w->role == SA__ROLE__ROLE_ENCODER ? "encoder" : "stage");
      cJSON_AddStringToObject(wo, "address", w->address);
      cJSON_AddStringToObject(wo, "replica", w->replica_name);
      cJSON_AddNumberToObject(wo, "first_layer", w->first_layer);
      cJSON_AddNumberToObject(wo, "last_layer", w->last_layer);
      cJSON_AddBoolToObject(wo, "healthy", w->healthy);
      cJSON_AddNumberToObject(wo, "load", w->load);
      cJSON_AddNumberToObject(wo, "kv_blocks_used", (double)w->kv_blocks_used);
      cJSON_AddNumberToObject(wo, "kv_blocks_free", (double)w->kv_blocks_free);
      cJSON_AddNumberToObject(wo, "kv_blocks_shared", (double)w->kv_blocks_shared);
      cJSON_AddNumberToObject(wo, "sequences", w->sequences);
      cJSON_AddBoolToObject(wo, "draining", w->draining);
      cJSON_AddItemToArray(ws, wo);
    }
    char *s = cJSON_PrintUnformatted(o);
    puts(s ? s : "{}");
    free(s);
    cJSON_Delete(o);
  } else {
    printf("coordinator %s  model %s\n", addr, st->model_id);
    if (st->insecure)
      printf("INSECURE: this cluster runs in plain text, without authentication\n");
    else
      printf("transport: CurveZMQ (encrypted, keys checked); handshakes refused: %lld\n",
             (long long)st->handshakes_refused);
    printf("replicas ready: %d   requests running: %d   queued: %d   chains running: %d   "
           "forks: %lld\n",
           st->replicas_ready, st->requests_running, st->requests_queued, st->chains_running,
           (long long)st->forks_total);
    printf("%-8s %-24s %-28s %-8s %-9s %-7s %-6s %-14s %s\n", "ROLE", "NODE", "ADDRESS",
           "REPLICA", "LAYERS", "HEALTH", "LOAD", "KV USED/TOTAL", "KV SHARED");
    for (size_t i = 0; i < st->n_workers; i++) {
      const Sa__WorkerInfo *w = st->workers[i];
      char layers[32] = "-", kv[48] = "-";
      if (w->role == SA__ROLE__ROLE_STAGE) {
        snprintf(layers, sizeof layers, "%d:%d", w->first_layer, w->last_layer);
        snprintf(kv, sizeof kv, "%lld/%lld", (long long)w->kv_blocks_used,
                 (long long)(w->kv_blocks_used + w->kv_blocks_free));
      }
      char shared[24] = "-";
      if (w->role == SA__ROLE__ROLE_STAGE)
        snprintf(shared, sizeof shared, "%lld", (long long)w->kv_blocks_shared);
      printf("%-8s %-24s %-28s %-8s %-9s %-7s %-6.2f %-14s %s\n",
             w->role == SA__ROLE__ROLE_ENCODER ? "encoder" : "stage", w->node_id, w->address,
             w->role == SA__ROLE__ROLE_STAGE ? w->replica_name : "-", layers,
             w->healthy ? (w->draining ? "drain" : "up") : "DOWN", w->load, kv, shared);
    }
  }
  sa__status_response__free_unpacked(st, NULL);
  return 0;
}

/* ------------------------------------------------------------------- drain */

/* One Coordinator/Drain call; *out gets the answer. 0, or 1 with the reason
 * printed. */
static int drain_call(const char *addr, const sa_rpc_opts_t *o, const Sa__DrainRequest *rq,
                      Sa__DrainResponse **out) {
  uint8_t buf[512];
  size_t len = sa__drain_request__pack(rq, buf);
  sa_rpc_reply_t *rep = NULL;
  int rc = sa_rpc_call_sync(addr, o, "Coordinator/Drain", buf, len, NULL, 0, 5000, &rep);
  if (rc) {
    fprintf(stderr, "sa-client: cannot reach %s: %s\n", addr, sa_strerror(rc));
    return 1;
  }
  if (rep->status != SA_STATUS_OK) {
    fprintf(stderr, "sa-client: %s: %s: %s\n", addr, sa_status_name(rep->status),
            rep->status_msg ? rep->status_msg : "");
    sa_rpc_reply_free(&rep);
    return 1;
  }
  *out = sa__drain_response__unpack(NULL, rep->body_len, rep->body);
  sa_rpc_reply_free(&rep);
  if (!*out) {
    fprintf(stderr, "sa-client: malformed DrainResponse\n");
    return 1;
  }
  return 0;
}

static int cmd_drain(int argc, char **argv, bool undrain) {
  static const struct option longopts[] = {{"migrate", no_argument, 0, 'm'},
                                           {"no-wait", no_argument, 0, 'W'},
                                           {"timeout", required_argument, 0, 'T'},
                                           {"coordinator", required_argument, 0, 'c'},
                                           {"help", no_argument, 0, 'h'},
                                           SA_SEC_LONGOPTS,
                                           {0, 0, 0, 0}};
  sa_sec_args_t sa = {0};
  const char *coord = NULL;
  bool migrate = false, wait = true;
  double timeout_s = 600;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'm': migrate = true; break;
    case 'W': wait = false; break;
    case 'T': timeout_s = parse_float(optarg, "--timeout"); break;
    case 'c': coord = optarg; break;
    case 'h': usage(stdout); return 0;
    default:
      if (sa_sec_args_take(&sa, opt, optarg))
        break;
      usage(stderr);
      return 2;
    }
  }
  if (optind >= argc) {
    fprintf(stderr, "sa-client: %s needs a TARGET (a replica name or a node id)\n",
            undrain ? "undrain" : "drain");
    return 2;
  }
  sa_sec_t sec;
  sa_rpc_opts_t ro;
  sa_rpc_opts_default(&ro);
  if (sa_client_security("sa-client", &sa, &sec, &ro, true))
    return 2;
  const char *addr = sa_client_coordinator_addr(coord);
  Sa__DrainRequest rq = SA__DRAIN_REQUEST__INIT;
  rq.target = argv[optind];
  rq.migrate = migrate;
  rq.undrain = undrain;
  Sa__DrainResponse *d = NULL;
  int rc = drain_call(addr, &ro, &rq, &d);
  if (rc == 0 && d->workers == 0) {
    fprintf(stderr, "sa-client: no replica or worker named '%s' (see sa-client status)\n",
            rq.target);
    rc = 1;
  } else if (rc == 0 && undrain) {
    printf("%s: %d workers take work again\n", rq.target, d->workers);
  } else if (rc == 0) {
    printf("%s: draining %d workers%s; %d requests running\n", rq.target, d->workers,
           migrate ? " (moving their requests)" : "", d->requests);
    rq.migrate = false; /* the move was asked once */
    double t0 = sa_now_s();
    while (wait && !d->done && sa_now_s() - t0 < timeout_s) {
      usleep(300 * 1000);
      sa__drain_response__free_unpacked(d, NULL);
      d = NULL;
      if ((rc = drain_call(addr, &ro, &rq, &d)) != 0)
        break;
      fprintf(stderr, "\rsa-client: %d requests still running on %s   ", d->requests, rq.target);
    }
    if (rc == 0 && wait) {
      fprintf(stderr, "\n");
      if (d->done) {
        printf("%s: drained; nothing runs there (its processes may be stopped)\n", rq.target);
      } else {
        fprintf(stderr, "sa-client: %s not drained after %.0f s\n", rq.target, timeout_s);
        rc = 1;
      }
    }
  }
  if (d)
    sa__drain_response__free_unpacked(d, NULL);
  sa_sec_close(&sec);
  return rc;
}

int main(int argc, char **argv) {
  sa_log_init("sa-client");
  sa_log_set_level(SA_LOG_LEVEL_ERROR);
  if (sodium_init() < 0) { /* random request ids */
    fprintf(stderr, "sa-client: libsodium could not start\n");
    return 1;
  }
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "submit"))
    return cmd_submit(argc - 1, argv + 1);
  if (!strcmp(argv[1], "status"))
    return cmd_status(argc - 1, argv + 1);
  if (!strcmp(argv[1], "drain") || !strcmp(argv[1], "undrain"))
    return cmd_drain(argc - 1, argv + 1, !strcmp(argv[1], "undrain"));
  fprintf(stderr, "sa-client: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
