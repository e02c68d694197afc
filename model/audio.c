/*
 * audio — FFmpeg decode from memory to 16 kHz mono float, and chunking.
 * See audio.h for the contract. Not the mel front end; no files, no sockets.
 *
 * Defences against hostile input: a byte limit checked before FFmpeg sees
 * anything; probe and analyse bounds; a whitelist of audio demuxers (so an
 * image, a playlist or a subtitle file is refused at open); nested opens
 * refused (io_open); a cap on packets read; the declared and the decoded
 * duration checked against the limit as samples arrive, so a small input
 * that decodes to hours of audio stops early.
 */
#include "audio.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avstring.h>
#include <libavutil/channel_layout.h>
#include <libavutil/opt.h>
#include <libswresample/swresample.h>

#include "log.h"
#include "sa_error.h"

#define AVIO_BUF_SIZE 32768
#define MAX_CHANNELS 32

/* Demuxers we accept: audio containers and the usual A/V containers that
 * carry audio. Anything else (images, playlists, text formats) is refused. */
static const char k_format_whitelist[] =
    "wav,w64,rf64,mp3,flac,ogg,matroska,webm,mov,mp4,m4a,aac,ac3,eac3,aiff,"
    "caf,au,amr,amrnb,amrwb,wv,ape,tta,asf,avi,flv,mpeg,mpegts,voc,dts,"
    "dtshd,truehd,mlp,mpc,mpc8,xwma,rm,shn,tak,dsf,gsm,sox,mp2,loas,latm,"
    "spdif,iff,qcp,sln,wsaud,nut,mxf,3gp";

void sa_audio_limits_default(sa_audio_limits_t *lim) {
  lim->max_bytes = SA_AUDIO_DEFAULT_MAX_BYTES;
  lim->max_seconds = SA_AUDIO_DEFAULT_MAX_SECONDS;
}

size_t sa_audio_chunk_count(size_t n_samples) {
  return (n_samples + SA_AUDIO_CHUNK_SAMPLES - 1) / SA_AUDIO_CHUNK_SAMPLES;
}

int sa_audio_chunk_range(size_t n_samples, size_t i, size_t *offset,
                         size_t *len) {
  if (i >= sa_audio_chunk_count(n_samples))
    return SA_EINVAL;
  size_t off = i * (size_t)SA_AUDIO_CHUNK_SAMPLES;
  size_t rest = n_samples - off;
  *offset = off;
  *len = rest < SA_AUDIO_CHUNK_SAMPLES ? rest : SA_AUDIO_CHUNK_SAMPLES;
  return 0;
}

/* --- FFmpeg logging into ours ------------------------------------------- */

static void ff_log_cb(void *avcl, int level, const char *fmt, va_list vl) {
  if (level > av_log_get_level())
    return;
  char line[512];
  int print_prefix = 1;
  va_list cp;
  va_copy(cp, vl);
  av_log_format_line2(avcl, level, fmt, cp, line, sizeof line, &print_prefix);
  va_end(cp);
  size_t n = strlen(line);
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
    line[--n] = '\0';
  /* FFmpeg complaints about bad input are expected: the caller gets a
   * reason through err; keep FFmpeg's words at debug level. */
  SA_LOG_DEBUG("ffmpeg: %s", line);
}

static pthread_once_t g_ff_once = PTHREAD_ONCE_INIT;
static void ff_init_once(void) {
  av_log_set_level(AV_LOG_WARNING);
  av_log_set_callback(ff_log_cb);
}

/* --- in-memory AVIOContext ---------------------------------------------- */

typedef struct {
  const uint8_t *data;
  size_t len;
  size_t pos;
} mem_reader_t;

static int mem_read(void *opaque, uint8_t *buf, int buf_size) {
  mem_reader_t *m = opaque;
  if (buf_size <= 0)
    return 0;
  if (m->pos >= m->len)
    return AVERROR_EOF;
  size_t n = m->len - m->pos;
  if (n > (size_t)buf_size)
    n = (size_t)buf_size;
  memcpy(buf, m->data + m->pos, n);
  m->pos += n;
  return (int)n;
}

static int64_t mem_seek(void *opaque, int64_t offset, int whence) {
  mem_reader_t *m = opaque;
  whence &= ~AVSEEK_FORCE;
  if (whence == AVSEEK_SIZE)
    return (int64_t)m->len;
  int64_t base;
  switch (whence) {
  case SEEK_SET: base = 0; break;
  case SEEK_CUR: base = (int64_t)m->pos; break;
  case SEEK_END: base = (int64_t)m->len; break;
  default: return AVERROR(EINVAL);
  }
  if ((offset > 0 && base > INT64_MAX - offset) || base + offset < 0)
    return AVERROR(EINVAL);
  int64_t p = base + offset;
  if ((uint64_t)p > m->len) /* seeking past the end: clamp, reads give EOF */
    p = (int64_t)m->len;
  m->pos = (size_t)p;
  return p;
}

static int deny_io_open(struct AVFormatContext *s, AVIOContext **pb,
                        const char *url, int flags, AVDictionary **options) {
  (void)s;
  (void)pb;
  (void)flags;
  (void)options;
  SA_LOG_DEBUG("audio: refused nested open of '%s'", url ? url : "");
  return AVERROR(EPERM);
}

/* --- decode state --------------------------------------------------------- */

typedef struct {
  SwrContext *swr;
  int in_rate;
  enum AVSampleFormat in_fmt;
  AVChannelLayout in_layout;
  float *out;
  size_t n_out;
  size_t cap_out;
  size_t max_samples; /* the duration limit in output samples */
  char *err;
  size_t err_cap;
} dec_state_t;


static const char *fferr(int rc, char *buf, size_t cap) {
  if (av_strerror(rc, buf, cap) < 0)
    snprintf(buf, cap, "error %d", rc);
  return buf;
}

/* Makes room for `more` output samples; fails past the duration limit. */
static int reserve_out(dec_state_t *s, size_t more) {
  size_t need = s->n_out + more;
  if (need <= s->cap_out)
    return 0;
  size_t cap = s->cap_out ? s->cap_out * 2 : 16384;
  if (cap < need)
    cap = need;
  size_t hard = s->max_samples + more; /* never allocate far past the limit */
  if (cap > hard)
    cap = hard;
  if (cap < need)
    cap = need;
  if (cap > SIZE_MAX / sizeof(float))
    return SA_ENOMEM;
  float *p = realloc(s->out, cap * sizeof(float));
  if (!p)
    return SA_ENOMEM;
  s->out = p;
  s->cap_out = cap;
  return 0;
}

static int check_duration(dec_state_t *s) {
  if (s->n_out > s->max_samples) {
    sa_set_err(s->err, s->err_cap,
           "audio is longer than the limit of %.1f s",
           (double)s->max_samples / SA_AUDIO_SAMPLE_RATE);
    return SA_EINVAL;
  }
  return 0;
}

/* Drains what the resampler still holds into the output. */
static int swr_drain(dec_state_t *s) {
  if (!s->swr)
    return 0;
  for (int guard = 0; guard < 64; guard++) {
    int room = swr_get_out_samples(s->swr, 0);
    if (room <= 0)
      return 0;
    int rc = reserve_out(s, (size_t)room);
    if (rc)
      return rc;
    uint8_t *dst = (uint8_t *)(s->out + s->n_out);
    int got = swr_convert(s->swr, &dst, room, NULL, 0);
    if (got < 0)
      return SA_EINTERNAL;
    if (got == 0)
      return 0;
    s->n_out += (size_t)got;
    if ((rc = check_duration(s)))
      return rc;
  }
  return 0;
}

/* (Re)creates the resampler for the frame's rate, format and layout:
 * any layout -> mono by equal-weight averaging, any rate -> 16 kHz, float. */
static int swr_setup(dec_state_t *s, const AVFrame *fr) {
  int rc;
  AVChannelLayout in = {0};
  int nch = fr->ch_layout.nb_channels;
  if (nch <= 0 || nch > MAX_CHANNELS) {
    sa_set_err(s->err, s->err_cap, "unsupported channel count %d", nch);
    return SA_EINVAL;
  }
  if (fr->sample_rate <= 0 || fr->sample_rate > SA_AUDIO_MAX_RATE) {
    sa_set_err(s->err, s->err_cap, "unsupported sample rate %d Hz (the limit is %d)",
               fr->sample_rate, SA_AUDIO_MAX_RATE);
    return SA_EINVAL;
  }
  if (fr->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC)
    av_channel_layout_default(&in, nch);
  else if (av_channel_layout_copy(&in, &fr->ch_layout) < 0)
    return SA_ENOMEM;

  if ((rc = swr_drain(s))) {
    av_channel_layout_uninit(&in);
    return rc;
  }
  swr_free(&s->swr);
  av_channel_layout_uninit(&s->in_layout);

  AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
  SwrContext *swr = NULL;
  if (swr_alloc_set_opts2(&swr, &mono, AV_SAMPLE_FMT_FLT, SA_AUDIO_SAMPLE_RATE,
                          &in, (enum AVSampleFormat)fr->format, fr->sample_rate,
                          0, NULL) < 0 || !swr) {
    av_channel_layout_uninit(&in);
    sa_set_err(s->err, s->err_cap, "cannot convert this sample format/layout");
    return SA_EINVAL;
  }
  /* Mix in float so averaging does not round to the input's integer grid. */
  av_opt_set_sample_fmt(swr, "internal_sample_fmt", AV_SAMPLE_FMT_FLTP, 0);
  double matrix[MAX_CHANNELS];
  for (int c = 0; c < nch; c++)
    matrix[c] = 1.0 / nch;
  if (swr_set_matrix(swr, matrix, nch) < 0 || swr_init(swr) < 0) {
    swr_free(&swr);
    av_channel_layout_uninit(&in);
    sa_set_err(s->err, s->err_cap, "cannot set up resampling from %d Hz, %d ch",
           fr->sample_rate, nch);
    return SA_EINVAL;
  }
  s->swr = swr;
  s->in_rate = fr->sample_rate;
  s->in_fmt = (enum AVSampleFormat)fr->format;
  s->in_layout = in;
  return 0;
}

static int convert_frame(dec_state_t *s, const AVFrame *fr) {
  int rc;
  if (fr->nb_samples <= 0)
    return 0;
  if (!s->swr || fr->sample_rate != s->in_rate || fr->format != s->in_fmt ||
      fr->ch_layout.nb_channels != s->in_layout.nb_channels ||
      (fr->ch_layout.order != AV_CHANNEL_ORDER_UNSPEC &&
       av_channel_layout_compare(&fr->ch_layout, &s->in_layout) != 0)) {
    if ((rc = swr_setup(s, fr)))
      return rc;
  }
  int room = swr_get_out_samples(s->swr, fr->nb_samples);
  if (room < 0)
    return SA_EINTERNAL;
  if ((rc = reserve_out(s, (size_t)room)))
    return rc;
  uint8_t *dst = (uint8_t *)(s->out + s->n_out);
  int got = swr_convert(s->swr, &dst, room,
                        (const uint8_t **)fr->extended_data, fr->nb_samples);
  if (got < 0) {
    sa_set_err(s->err, s->err_cap, "resampling failed");
    return SA_EINTERNAL;
  }
  s->n_out += (size_t)got;
  return check_duration(s);
}

/* Pulls every frame the decoder has ready. Decode errors in one frame are
 * counted in *bad and skipped; only our own failures are returned. */
static int drain_decoder(dec_state_t *s, AVCodecContext *dec, AVFrame *fr,
                         int *bad, int *last_ff) {
  for (;;) {
    int rc = avcodec_receive_frame(dec, fr);
    if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF)
      return 0;
    if (rc < 0) {
      (*bad)++;
      *last_ff = rc;
      return 0;
    }
    rc = convert_frame(s, fr);
    av_frame_unref(fr);
    if (rc)
      return rc;
  }
}

static int is_exact_length_codec(enum AVCodecID id) {
  /* PCM/ADPCM-free raw PCM ids and FLAC report exact sample counts. */
  return (id >= AV_CODEC_ID_PCM_S16LE && id < AV_CODEC_ID_ADPCM_IMA_QT) ||
         id == AV_CODEC_ID_FLAC || id == AV_CODEC_ID_WAVPACK ||
         id == AV_CODEC_ID_TTA;
}

static uint32_t rd32le(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

/* FFmpeg's WAV demuxer silently clamps the data chunk to the bytes present,
 * so a cut-off upload would decode as a short clip. Walk the RIFF chunks and
 * compare the data chunk's declared size with what is there. Returns the
 * missing fraction's bytes (0 if complete, not a WAV, or size unknown). */
static size_t wav_missing_bytes(const uint8_t *d, size_t len, size_t *declared) {
  if (len < 12 || memcmp(d, "RIFF", 4) != 0 || memcmp(d + 8, "WAVE", 4) != 0)
    return 0;
  size_t off = 12;
  for (int guard = 0; guard < 64 && off + 8 <= len; guard++) {
    uint32_t sz = rd32le(d + off + 4);
    if (memcmp(d + off, "data", 4) == 0) {
      if (sz == 0 || sz == 0xffffffffu) /* streamed: size unknown */
        return 0;
      size_t have = len - (off + 8);
      *declared = sz;
      return sz > have ? sz - have : 0;
    }
    if (sz > len - (off + 8))
      return 0;
    off += 8 + (size_t)sz + (sz & 1);
  }
  return 0;
}

int sa_audio_decode(const void *data, size_t len, const sa_audio_limits_t *lim,
                    float **pcm, size_t *n_samples, char *err, size_t cap) {
  int rc = 0, ffrc;
  char fb[128];
  sa_audio_limits_t L;
  sa_audio_limits_default(&L);
  if (lim) {
    if (lim->max_bytes)
      L.max_bytes = lim->max_bytes;
    if (lim->max_seconds > 0)
      L.max_seconds = lim->max_seconds;
  }
  if (err && cap)
    err[0] = '\0';
  if (!pcm || !n_samples)
    return SA_EINVAL;
  *pcm = NULL;
  *n_samples = 0;

  if (!data || len == 0) {
    sa_set_err(err, cap, "empty audio input");
    return SA_EINVAL;
  }
  if (len > L.max_bytes) {
    sa_set_err(err, cap, "audio input is %zu bytes, over the limit of %zu bytes",
           len, L.max_bytes);
    return SA_EINVAL;
  }
  pthread_once(&g_ff_once, ff_init_once);

  mem_reader_t mem = {.data = data, .len = len, .pos = 0};
  dec_state_t s = {0};
  s.err = err;
  s.err_cap = cap;
  s.in_fmt = AV_SAMPLE_FMT_NONE;
  double max_samples_d = ceil(L.max_seconds * SA_AUDIO_SAMPLE_RATE);
  s.max_samples = max_samples_d >= (double)(SIZE_MAX / 8)
                      ? SIZE_MAX / 8
                      : (size_t)max_samples_d;

  AVIOContext *avio = NULL;
  AVFormatContext *fmt = NULL;
  AVCodecContext *dec = NULL;
  AVFrame *fr = NULL;
  AVPacket *pkt = NULL;
  AVDictionary *opts = NULL;
  uint8_t *avio_buf = av_malloc(AVIO_BUF_SIZE);
  if (!avio_buf)
    goto nomem;
  avio = avio_alloc_context(avio_buf, AVIO_BUF_SIZE, 0, &mem, mem_read, NULL,
                            mem_seek);
  if (!avio) {
    av_free(avio_buf);
    goto nomem;
  }
  fmt = avformat_alloc_context();
  if (!fmt)
    goto nomem;
  fmt->pb = avio;
  fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
  fmt->io_open = deny_io_open;

  /* Probe the content ourselves, to name what was found when it is not audio. */
  const AVInputFormat *ifmt = NULL;
  ffrc = av_probe_input_buffer2(avio, &ifmt, "", NULL, 0, 1 << 20);
  if (ffrc < 0 || !ifmt) {
    sa_set_err(err, cap, "not a recognised audio file (too short, damaged or "
                     "not audio: %s)",
           fferr(ffrc < 0 ? ffrc : AVERROR_INVALIDDATA, fb, sizeof fb));
    rc = SA_EINVAL;
    goto fail;
  }
  if (av_match_list(ifmt->name, k_format_whitelist, ',') <= 0) {
    sa_set_err(err, cap, "not an audio file (the content looks like '%s')",
           ifmt->name);
    rc = SA_EINVAL;
    goto fail;
  }
  av_dict_set(&opts, "probesize", "2000000", 0);
  av_dict_set(&opts, "formatprobesize", "1048576", 0);
  av_dict_set(&opts, "analyzeduration", "10000000", 0); /* 10 s in us */
  av_dict_set(&opts, "format_whitelist", k_format_whitelist, 0);
  av_dict_set(&opts, "protocol_whitelist", "none", 0);
  ffrc = avformat_open_input(&fmt, "", ifmt, &opts); /* frees fmt on error */
  av_dict_free(&opts);
  if (ffrc < 0) {
    sa_set_err(err, cap, "damaged or truncated %s file (%s)", ifmt->name,
           fferr(ffrc, fb, sizeof fb));
    rc = SA_EINVAL;
    goto fail;
  }
  ffrc = avformat_find_stream_info(fmt, NULL);
  if (ffrc < 0) {
    sa_set_err(err, cap, "cannot read the stream parameters (%s)",
           fferr(ffrc, fb, sizeof fb));
    rc = SA_EINVAL;
    goto fail;
  }
  const AVCodec *codec = NULL;
  int si = av_find_best_stream(fmt, AVMEDIA_TYPE_AUDIO, -1, -1, &codec, 0);
  if (si < 0) {
    sa_set_err(err, cap, si == AVERROR_DECODER_NOT_FOUND
                         ? "no decoder for the audio stream"
                         : "no audio stream in the input");
    rc = SA_EINVAL;
    goto fail;
  }
  AVStream *st = fmt->streams[si];
  for (unsigned i = 0; i < fmt->nb_streams; i++)
    if ((int)i != si)
      fmt->streams[i]->discard = AVDISCARD_ALL;

  /* Duration the container declares, when it is measured, not guessed. */
  double declared = -1.0;
  if (fmt->duration_estimation_method != AVFMT_DURATION_FROM_BITRATE) {
    if (st->duration != AV_NOPTS_VALUE && st->duration > 0)
      declared = (double)st->duration * av_q2d(st->time_base);
    else if (fmt->duration != AV_NOPTS_VALUE && fmt->duration > 0)
      declared = (double)fmt->duration / AV_TIME_BASE;
  }
  if (declared > L.max_seconds + 1.0) {
    sa_set_err(err, cap, "audio is %.1f s long, over the limit of %.1f s",
           declared, L.max_seconds);
    rc = SA_EINVAL;
    goto fail;
  }

  dec = avcodec_alloc_context3(codec);
  if (!dec)
    goto nomem;
  if (avcodec_parameters_to_context(dec, st->codecpar) < 0)
    goto nomem;
  dec->thread_count = 1;
  dec->pkt_timebase = st->time_base;
  ffrc = avcodec_open2(dec, codec, NULL);
  if (ffrc < 0) {
    sa_set_err(err, cap, "cannot open the %s decoder (%s)", codec->name,
           fferr(ffrc, fb, sizeof fb));
    rc = SA_EINVAL;
    goto fail;
  }
  fr = av_frame_alloc();
  pkt = av_packet_alloc();
  if (!fr || !pkt)
    goto nomem;

  int bad = 0, last_ff = 0;
  size_t packets = 0, max_packets = len + 4096;
  while ((ffrc = av_read_frame(fmt, pkt)) >= 0) {
    if (++packets > max_packets) {
      av_packet_unref(pkt);
      sa_set_err(err, cap, "malformed input: too many packets for its size");
      rc = SA_EINVAL;
      goto fail;
    }
    if (pkt->stream_index == si) {
      int src = avcodec_send_packet(dec, pkt);
      if (src < 0 && src != AVERROR(EAGAIN)) {
        bad++;
        last_ff = src;
      }
      if ((rc = drain_decoder(&s, dec, fr, &bad, &last_ff))) {
        av_packet_unref(pkt);
        goto fail;
      }
    }
    av_packet_unref(pkt);
  }
  if (ffrc != AVERROR_EOF) {
    /* A read error mid-file: keep what decoded; the checks below decide. */
    bad++;
    last_ff = ffrc;
  }
  if (avcodec_send_packet(dec, NULL) >= 0 &&
      (rc = drain_decoder(&s, dec, fr, &bad, &last_ff)))
    goto fail;
  if ((rc = swr_drain(&s)))
    goto fail;

  if (s.n_out == 0) {
    if (bad)
      sa_set_err(err, cap, "could not decode any audio (%s)",
             fferr(last_ff, fb, sizeof fb));
    else
      sa_set_err(err, cap, "the input holds no audio samples (zero length)");
    rc = SA_EINVAL;
    goto fail;
  }
  double decoded = (double)s.n_out / SA_AUDIO_SAMPLE_RATE;
  size_t wav_declared = 0;
  size_t missing = wav_missing_bytes(data, len, &wav_declared);
  if (missing > 64 + wav_declared / 100) {
    sa_set_err(err, cap,
           "truncated WAV: the data chunk declares %zu bytes, %zu are missing",
           wav_declared, missing);
    rc = SA_EINVAL;
    goto fail;
  }
  if (declared > 0) {
    /* Lossy codecs count encoder delay and padding in the declared length. */
    int sr = st->codecpar->sample_rate > 0 ? st->codecpar->sample_rate : 8000;
    double slack = 0.01 + 0.01 * declared;
    if (!is_exact_length_codec(st->codecpar->codec_id))
      slack += 4608.0 / sr;
    if (decoded < declared - slack) {
      sa_set_err(err, cap,
             "truncated audio: the header declares %.3f s, only %.3f s decoded",
             declared, decoded);
      rc = SA_EINVAL;
      goto fail;
    }
  }
  if (bad)
    SA_LOG_DEBUG("audio: %d undecodable packets skipped (%s)", bad,
                 fferr(last_ff, fb, sizeof fb));

  float *shrunk = realloc(s.out, s.n_out * sizeof(float));
  *pcm = shrunk ? shrunk : s.out;
  *n_samples = s.n_out;
  s.out = NULL;
  rc = 0;
  goto done;

nomem:
  sa_set_err(err, cap, "out of memory while decoding audio");
  rc = SA_ENOMEM;
fail:
  free(s.out);
  s.out = NULL;
done:
  av_packet_free(&pkt);
  av_frame_free(&fr);
  avcodec_free_context(&dec);
  swr_free(&s.swr);
  av_channel_layout_uninit(&s.in_layout);
  avformat_close_input(&fmt); /* custom IO: does not free avio */
  if (avio) {
    av_freep(&avio->buffer);
    avio_context_free(&avio);
  }
  return rc;
}
