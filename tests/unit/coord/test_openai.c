/*
 * test_openai — coordinator/openai.c: the request shapes Step-Audio-R1's
 * client and the OpenAI SDK send become the right parameters, and every
 * malformed or unsupported body is refused with a message and the
 * parameter's name. Pure: no sockets. The fuzz target is
 * tests/fuzz/coord/fuzz_openai.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "openai.h"
#include "sa_error.h"

static const coord_openai_limits_t k_lim = {.max_audio_bytes = 64, .default_max_tokens = 77};
static coord_openai_req_t g_r;
static char g_err[256], g_param[64];

static int parse(const char *body) {
  coord_openai_free(&g_r);
  return coord_openai_parse(body, strlen(body), &k_lim, &g_r, g_err, sizeof g_err, g_param,
                            sizeof g_param);
}

static void refused(const char *body, const char *param, const char *words) {
  int rc = parse(body);
  if (rc != SA_EINVAL)
    fail_msg("accepted: %s", body);
  if (strcmp(g_param, param) != 0)
    fail_msg("param '%s', want '%s' for %s (%s)", g_param, param, body, g_err);
  if (!strstr(g_err, words))
    fail_msg("message '%s' lacks '%s'", g_err, words);
}

static void test_text_and_defaults(void **state) {
  (void)state;
  assert_int_equal(parse("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"S\"},"
                         "{\"role\":\"user\",\"content\":\"hello\"}]}"),
                   0);
  assert_string_equal(g_r.model, "m");
  assert_string_equal(g_r.p.system, "S");
  assert_int_equal(g_r.p.n_parts, 1);
  assert_string_equal(g_r.p.parts[0].text, "hello");
  assert_string_equal(g_r.prompt, "hello");
  assert_int_equal(g_r.p.max_tokens, 77); /* the caller's default */
  assert_int_equal(g_r.p.n_chains, 1);
  assert_true(g_r.p.sampling.temperature == 1.0f); /* OpenAI's default */
  assert_true(g_r.p.sampling.top_p == 1.0f);
  assert_int_equal(g_r.n_audio, 0);
  assert_false(g_r.stream);
  assert_int_equal(g_r.p.vote_rule, SA__VOTE_RULE__VOTE_MAJORITY);
}

static void test_r1_client_shape(void **state) {
  (void)state;
  /* "UklGRg==" is the 4 bytes "RIFF" */
  assert_int_equal(
      parse("{\"model\":\"Step-Audio-R1\",\"stream\":true,\"stream_options\":{\"include_usage\":"
            "true},\"max_tokens\":16,\"temperature\":0.7,\"top_p\":0.9,\"top_k\":-1,\"seed\":9,"
            "\"n\":4,\"vote\":\"window:2\",\"think_budget\":5,\"repetition_penalty\":1.05,"
            "\"stop_token_ids\":[151665],\"skip_special_tokens\":false,"
            "\"continue_final_message\":true,\"add_generation_prompt\":false,\"messages\":["
            "{\"role\":\"human\",\"eot\":false,\"content\":[{\"type\":\"text\",\"text\":\"Q: \"},"
            "{\"type\":\"input_audio\",\"input_audio\":{\"data\":\"UklGRg==\",\"format\":\"wav\"}}"
            ",{\"type\":\"text\",\"text\":\"what?\"}]},"
            "{\"role\":\"assistant\",\"content\":\"<think>\\n\",\"eot\":false}]}"),
      0);
  assert_true(g_r.stream && g_r.include_usage && !g_r.skip_special_tokens);
  assert_int_equal(g_r.p.max_tokens, 16);
  assert_int_equal(g_r.p.n_chains, 4);
  assert_int_equal(g_r.p.vote_rule, SA__VOTE_RULE__VOTE_FIRST_K_AGREE);
  assert_int_equal(g_r.p.vote_k, 2);
  assert_int_equal(g_r.p.think_budget, 5);
  assert_int_equal(g_r.p.sampling.seed, 9);
  assert_int_equal(g_r.p.sampling.top_k, 0); /* -1: off */
  assert_int_equal(g_r.n_stop_token_ids, 1);
  assert_int_equal(g_r.stop_token_ids[0], 151665);
  /* the parts in order: text, audio, text, then the assistant's prefix,
   * left open for generation to continue */
  assert_int_equal(g_r.p.n_parts, 4);
  assert_string_equal(g_r.p.parts[0].text, "Q: ");
  assert_null(g_r.p.parts[1].text);
  assert_int_equal(g_r.p.parts[1].audio_len, 4);
  assert_memory_equal(g_r.p.parts[1].audio, "RIFF", 4);
  assert_string_equal(g_r.p.parts[2].text, "what?");
  for (int k = 0; k < 3; k++)
    assert_int_equal(g_r.p.parts[k].role, SA_CHAT_HUMAN);
  assert_true(g_r.p.parts[0].new_turn && !g_r.p.parts[1].new_turn);
  assert_int_equal(g_r.p.parts[3].role, SA_CHAT_ASSISTANT);
  assert_true(g_r.p.parts[3].new_turn);
  assert_string_equal(g_r.p.parts[3].text, "<think>\n");
  assert_int_equal(g_r.p.chat_flags, SA_CHAT_CONTINUE);
}

/* History: turns in order, each opened once; consecutive user messages stay
 * separate turns; an empty assistant message is a turn; a later system
 * message is a turn; the first is the system text. */
static void test_conversation(void **state) {
  (void)state;
  assert_int_equal(
      parse("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"S\"},"
            "{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"},"
            "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"<think>\\nr"
            "\\n</think>\\nA\"}]},{\"role\":\"system\",\"content\":\"T\"},"
            "{\"role\":\"assistant\",\"content\":null},"
            "{\"role\":\"human\",\"content\":[{\"type\":\"input_audio\",\"input_audio\":"
            "{\"data\":\"SUQz\"}}]}]}"),
      0);
  assert_string_equal(g_r.system, "S");
  const struct {
    sa_chat_role_t role;
    const char *text;
  } want[] = {{SA_CHAT_HUMAN, "a"},     {SA_CHAT_HUMAN, "b"},
              {SA_CHAT_ASSISTANT, "<think>\nr\n</think>\nA"},
              {SA_CHAT_SYSTEM, "T"},    {SA_CHAT_ASSISTANT, ""},
              {SA_CHAT_HUMAN, NULL}};
  assert_int_equal(g_r.p.n_parts, 6);
  for (int k = 0; k < 6; k++) {
    assert_int_equal(g_r.p.parts[k].role, want[k].role);
    assert_true(g_r.p.parts[k].new_turn);
    if (want[k].text)
      assert_string_equal(g_r.p.parts[k].text, want[k].text);
    else
      assert_int_equal(g_r.p.parts[k].audio_len, 3);
  }
  assert_int_equal(g_r.p.chat_flags, 0); /* the generation prompt follows */
  /* a closed last assistant turn, and no generation prompt */
  assert_int_equal(parse("{\"model\":\"m\",\"add_generation_prompt\":false,\"messages\":["
                         "{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\","
                         "\"content\":\"x\"}]}"),
                   0);
  assert_int_equal(g_r.p.chat_flags, SA_CHAT_NO_GEN_PROMPT);
  assert_int_equal(g_r.p.n_parts, 2);
  /* an empty list of parts is an empty turn (found by fuzz_openai: it was a
   * NULL text) */
  assert_int_equal(parse("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
                         "{\"role\":\"assistant\",\"content\":[]},{\"role\":\"system\","
                         "\"content\":[]}]}"),
                   0);
  assert_int_equal(g_r.p.n_parts, 3);
  assert_string_equal(g_r.p.parts[1].text, "");
  assert_string_equal(g_r.p.parts[2].text, "");
}

static void test_audio_url_and_order(void **state) {
  (void)state;
  assert_int_equal(parse("{\"model\":\"m\",\"max_completion_tokens\":3,\"messages\":[{\"role\":"
                         "\"user\",\"content\":[{\"type\":\"audio_url\",\"audio_url\":{\"url\":"
                         "\"data:audio/mpeg;base64,SUQz\"}},{\"type\":\"text\",\"text\":\"t\"}]}]}"),
                   0);
  assert_int_equal(g_r.p.n_parts, 2);
  assert_int_equal(g_r.p.parts[0].audio_len, 3); /* audio came first */
  assert_memory_equal(g_r.p.parts[0].audio, "ID3", 3);
  assert_string_equal(g_r.p.parts[1].text, "t");
  assert_int_equal(g_r.p.max_tokens, 3);
  /* Step-Audio-R1's client sends a long clip as consecutive parts; adjacent
   * text parts join as the rendered template string would */
  assert_int_equal(parse("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":["
                         "{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"},"
                         "{\"type\":\"input_audio\",\"input_audio\":{\"data\":\"UklGRg==\"}},"
                         "{\"type\":\"input_audio\",\"input_audio\":{\"data\":\"SUQz\"}},"
                         "{\"type\":\"text\",\"text\":\"c\"}]}]}"),
                   0);
  assert_int_equal(g_r.p.n_parts, 4);
  assert_string_equal(g_r.p.parts[0].text, "ab");
  assert_int_equal(g_r.p.parts[1].audio_len, 4);
  assert_int_equal(g_r.p.parts[2].audio_len, 3);
  assert_string_equal(g_r.p.parts[3].text, "c");
  assert_int_equal(g_r.audio_bytes, 7);
  assert_int_equal(g_r.n_audio, 2);
}

static void test_refusals(void **state) {
  (void)state;
  refused("{", "", "JSON");
  refused("[1]", "", "JSON object");
  refused("{\"messages\":[]}", "model", "model");
  refused("{\"model\":\"m\"}", "messages", "non-empty");
  refused("{\"model\":\"m\",\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "messages",
          "robot");
  refused("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}",
          "messages", "user");
  refused("{\"model\":\"m\",\"continue_final_message\":true,\"messages\":[{\"role\":"
          "\"user\",\"content\":\"a\"}]}",
          "continue_final_message", "final assistant");
  refused("{\"model\":\"m\",\"continue_final_message\":true,\"add_generation_prompt\":true,"
          "\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\","
          "\"content\":\"x\"}]}",
          "add_generation_prompt", "both");
  refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":"
          "\"assistant\",\"content\":[{\"type\":\"input_audio\",\"input_audio\":{\"data\":"
          "\"SUQz\"}}]}]}",
          "messages", "user turns");
  refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":"
          "\"assistant\",\"content\":7}]}",
          "messages", "assistant content");
  refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"video\"}]}]}",
          "messages", "video");
  refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
          "\"input_audio\",\"input_audio\":{\"data\":\"!!\"}}]}]}",
          "messages", "base64");
  refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
          "\"audio_url\",\"audio_url\":{\"url\":\"https://x/y.wav\"}}]}]}",
          "messages", "data: URLs");
  /* 100 base64 chars = 75 bytes > the 64-byte limit */
  char big[400];
  snprintf(big, sizeof big,
           "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
           "\"input_audio\",\"input_audio\":{\"data\":\"%0100d\"}}]}]}",
           0);
  refused(big, "messages", "limit");
  const char *msgs = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
  char b[300];
  struct {
    const char *field, *param, *words;
  } bad[] = {
      {"\"temperature\":-0.5", "temperature", "temperature"},
      {"\"temperature\":\"hot\"", "temperature", "number"},
      {"\"top_p\":1.5", "top_p", "top_p"},
      {"\"max_tokens\":0", "max_tokens", "max_tokens"},
      {"\"max_tokens\":2.5", "max_tokens", "integer"},
      {"\"n\":0", "n", "n must"},
      {"\"seed\":-1", "seed", "seed"},
      {"\"vote\":\"window:0\"", "vote", "vote"},
      {"\"vote\":\"best\"", "vote", "vote"},
      {"\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", "stop", "at most 4"},
      {"\"stop\":[\"\"]", "stop", "non-empty"},
      {"\"stop\":7", "stop", "string or a list"},
      {"\"stop_token_ids\":[-3]", "stop_token_ids", "non-negative"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(b, sizeof b, "{\"model\":\"m\",%s,%s}", msgs, bad[i].field);
    refused(b, bad[i].param, bad[i].words);
  }
  snprintf(b, sizeof b, "{\"model\":\"m\",%s,\"stop\":[\"END\",\"\\n\\n\"]}", msgs);
  assert_int_equal(parse(b), 0);
  assert_int_equal(g_r.p.n_stop, 2);
  assert_string_equal(g_r.p.stop[0], "END");
  assert_string_equal(g_r.p.stop[1], "\n\n");
  snprintf(b, sizeof b, "{\"model\":\"m\",%s,\"stop\":\"x\"}", msgs);
  assert_int_equal(parse(b), 0);
  assert_int_equal(g_r.p.n_stop, 1);
  /* accepted oddities: unknown fields, null stop, an empty assistant prefix */
  snprintf(b, sizeof b, "{\"model\":\"m\",%s,\"stop\":null,\"logprobs\":false,\"x\":{}}", msgs);
  assert_int_equal(parse(b), 0);
  coord_openai_free(&g_r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_text_and_defaults),
      cmocka_unit_test(test_r1_client_shape),
      cmocka_unit_test(test_conversation),
      cmocka_unit_test(test_audio_url_and_order),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
