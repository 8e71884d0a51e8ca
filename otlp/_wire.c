/*
 * opstrata.otlp._wire: an ExportTraceServiceRequest, as serialized bytes, straight into the
 * buffers of the otel_traces Arrow columns.
 *
 * Why this exists: walking a parsed protobuf message from Python creates a Python object per
 * attribute, which caps decoding at a few tens of thousands of spans per second per core. Here
 * the wire format is read once and every column is written straight into Arrow buffers (for a
 * string column, int32 offsets + UTF-8 data), so no Python object is made per span, attribute
 * or value. The finished columns leave as one record batch through the Arrow C data interface
 * (see "Export"); the Python wrapper, decode_trace_bytes in decode_traces.py, imports it.
 *
 * The semantics are those of decode_traces() on a message parsed by upb, and of
 * anyvalue.AttributeRenderer; the tests compare both on generated and mutated requests.
 *   - Acceptance is upb's: a request upb rejects (broken wire format, invalid UTF-8 in a string
 *     field, nesting deeper than upb's limit of 100) raises DecodeError, and every part of the
 *     request is checked, including parts that are not stored. Unknown fields, and known fields
 *     sent with another wire type (which upb keeps as unknown fields), are skipped.
 *   - Parse semantics are upb's: a scalar field sent twice keeps the last value, a message field
 *     sent twice is merged (its repeated fields concatenated), an AnyValue keeps the oneof
 *     member it saw last.
 *   - Array and map AnyValues (and string_value_strindex) are rare and their JSON rendering is
 *     intricate, so they are checked here and rendered by a Python callback that parses the
 *     serialized KeyValue and calls render_anyvalue; the callback reports the values it cut.
 *
 * Errors: every function returns 0 on success and -1 with a Python exception set. All reads
 * are bounds-checked against the end of the enclosing field; recursion is bounded by depth
 * (MAX_DEPTH levels, as upb), so hostile input cannot overflow the C stack.
 *
 * The GIL: the parse and the export's C part run without it; see "The GIL" below.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LIKELY(x) __builtin_expect(!!(x), 1)

/* upb's default recursion limit: the request is level 0, each sub-message or group one more. */
#define MAX_DEPTH 100
/* Arrow and DuckDB keep nanosecond timestamps as signed 64-bit numbers. */
#define MAX_TIMESTAMP_NS ((uint64_t)INT64_MAX)

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

static PyObject *DecodeError;

/* ------------------------------------------------------------------------------------------ */
/* The GIL                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* A decoder parses without the GIL (the event loop's thread decodes inline, and holding the GIL
 * for the whole parse kept every other thread of the server waiting: docs/performance.md,
 * "Ingest, tenth round"); the export at the end, which makes Python objects, holds it again.
 * The parse writes only into malloc'd buffers; what needs Python there is rare (an error, no
 * memory, the render_complex callback, after which the parse keeps the GIL), and takes the GIL
 * back through gil_take() first, so that error paths stay as they were: whoever sets an
 * exception holds the GIL, and the decoder's entry point takes it back (a no-op if an error path
 * or a callback already did) before it returns.
 *
 * The thread state saved while this thread's parse runs without the GIL; NULL while it holds
 * it. Per thread, as decoders may now run in several threads at once. */
static _Thread_local PyThreadState *gil_saved;

static inline void
gil_release(void)
{
    gil_saved = PyEval_SaveThread();
}

/* Takes the GIL back if this thread's parse released it; a no-op while held. */
static inline void
gil_take(void)
{
    PyThreadState *t = gil_saved;
    if (t != NULL) {
        gil_saved = NULL;
        PyEval_RestoreThread(t);
    }
}

/* Only input that nobody can change while the parse runs without the GIL is parsed so: bytes
 * (the decode_*_bytes wrappers hand nothing else). A bytearray's buffer export keeps it from
 * being resized, but another thread could still write into it between a check and a copy
 * (a string validated as UTF-8 and stored as something else); such input keeps the GIL.
 * Requests under GIL_MIN_INPUT bytes keep it too: their parse is shorter than taking the GIL
 * back may take. */
#define GIL_MIN_INPUT 2048

static inline int
gil_release_for(const Py_buffer *view)
{
    if (view->obj == NULL || !PyBytes_Check(view->obj) || view->len < GIL_MIN_INPUT)
        return 0;
    gil_release();
    return 1;
}

static int
fail(const char *msg)
{
    gil_take();
    PyErr_SetString(DecodeError, msg);
    return -1;
}

static int
no_memory(void)
{
    gil_take();
    PyErr_NoMemory();
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Growable output buffers                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Column buffers are allocated with malloc, not PyMem: they end up owned by the exported Arrow
 * arrays, whose release callback may run on any thread without the GIL, and the parse that
 * grows them runs without it. */
typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static int
buf_grow(Buf *b, size_t need)
{
    if (need > (size_t)PY_SSIZE_T_MAX - b->len)
        return no_memory();
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < need) {
        if (cap > (size_t)PY_SSIZE_T_MAX / 2) {
            cap = (size_t)PY_SSIZE_T_MAX;
            break;
        }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (p == NULL)
        return no_memory();
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int
buf_reserve(Buf *b, size_t need)
{
    return (b->cap - b->len >= need) ? 0 : buf_grow(b, need);
}

static inline int
buf_put(Buf *b, const void *s, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static inline int
buf_put_i32(Buf *b, int32_t v)
{
    return buf_put(b, &v, sizeof v);
}

static inline int
buf_put_i64(Buf *b, int64_t v)
{
    return buf_put(b, &v, sizeof v);
}

static void
buf_free(Buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* What each column of the last request of one kind that stored rows took, and that request's
 * size. A request of about the same size reserves every column once, at what it will likely
 * need, instead of growing it from 256 bytes by doubling: a realloc and a copy per step were a
 * fifth of the metrics decoder's time and an eighth of the logs decoder's (docs/performance.md,
 * "Ingest, eighth round"). Only a hint: a column that outgrows it grows as before, and take()
 * gives back slack past 4 KiB; a request more than twice or under half the size of the last
 * is not hinted (its columns need not scale with it). Module state, read and written under
 * hints_lock: decoders parse without the GIL, so several may run at once (a lock taken twice a
 * request, uncontended but for that).
 *
 * Both keyed on `row_buf`, a column with a value per row (the time): a request that stored no
 * rows (every item rejected, or for metrics none of one table) says nothing of the next one's
 * sizes, so it is not learnt from; and without a row hinted, hints_presize reports "not hinted"
 * so that the caller's own guesses per row apply (else every column grew from 256 bytes: 10-30 %
 * slower decodes after such a request, docs/performance.md, "Ingest, ninth round"). */
static pthread_mutex_t hints_lock = PTHREAD_MUTEX_INITIALIZER;

/* The most Bufs a hinted run holds (a metrics table's; _Static_asserts check each run). */
#define MAX_HINTED_BUFS 96

static int
hints_presize(const size_t *shared_hint, const size_t *shared_hint_input, Buf *bufs, size_t n,
              size_t row_buf, size_t input)
{
    size_t hint[MAX_HINTED_BUFS]; /* a copy, so that the reallocs below run without the lock */
    pthread_mutex_lock(&hints_lock);
    size_t hint_input = *shared_hint_input;
    memcpy(hint, shared_hint, n * sizeof *hint);
    pthread_mutex_unlock(&hints_lock);
    if (hint_input == 0 || hint[row_buf] == 0 || input / 2 > hint_input || hint_input / 2 > input)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (hint[i] == 0)
            continue;
        /* hint[i] < 2 GiB (int32 offsets) and input is a body under the size limit */
        size_t want = (size_t)((unsigned __int128)hint[i] * input / hint_input);
        want += want / 16 + 64;
        if (bufs[i].cap >= want)
            continue;
        char *p = realloc(bufs[i].p, want);
        if (p == NULL)
            return 0; /* only a hint: the columns grow as they need, and report a failure then */
        bufs[i].p = p;
        bufs[i].cap = want;
    }
    return 1; /* hinted: a caller's own guesses of the sizes would only be worse */
}

static void
hints_learn(size_t *hint, size_t *hint_input, const Buf *bufs, size_t n, size_t row_buf,
            size_t input)
{
    if (bufs[row_buf].len == 0)
        return;
    pthread_mutex_lock(&hints_lock);
    for (size_t i = 0; i < n; i++)
        hint[i] = bufs[i].len;
    *hint_input = input;
    pthread_mutex_unlock(&hints_lock);
}

/* An Arrow string column: int32 offsets (starting with one 0) and the UTF-8 data. */
typedef struct {
    Buf data, offs;
} StrCol;

typedef struct {
    size_t data, offs;
} StrMark;

static int
strcol_init(StrCol *c)
{
    return buf_put_i32(&c->offs, 0);
}

/* Arrow's string offsets are int32: a column cannot hold more than 2 GiB. */
static int
strcol_room(StrCol *c, size_t n)
{
    if (n > (size_t)INT32_MAX - c->data.len)
        return fail("decoded string column would exceed 2 GiB");
    if (buf_reserve(&c->data, n) < 0 || buf_reserve(&c->offs, sizeof(int32_t)) < 0)
        return -1;
    return 0;
}

static inline void
strcol_close(StrCol *c)
{
    int32_t end = (int32_t)c->data.len;
    memcpy(c->offs.p + c->offs.len, &end, sizeof end);
    c->offs.len += sizeof end;
}

static int __attribute__((noinline))
strcol_add_slow(StrCol *c, const char *s, size_t n)
{
    if (strcol_room(c, n) < 0)
        return -1;
    if (n)
        memcpy(c->data.p + c->data.len, s, n);
    c->data.len += n;
    strcol_close(c);
    return 0;
}

/* Appends one string; inline, as it runs a few dozen times per span. */
static inline int
strcol_add(StrCol *c, const char *s, size_t n)
{
    if (LIKELY(c->data.cap - c->data.len >= n && c->offs.cap - c->offs.len >= sizeof(int32_t) &&
               c->data.len + n <= (size_t)INT32_MAX)) {
        if (n) /* an empty column may have no data buffer yet */
            memcpy(c->data.p + c->data.len, s, n);
        c->data.len += n;
        strcol_close(c);
        return 0;
    }
    return strcol_add_slow(c, s, n);
}

static const char HEX[] = "0123456789abcdef";

static int
strcol_add_hex(StrCol *c, const uint8_t *s, size_t n)
{
    if (n > (size_t)INT32_MAX / 2)
        return fail("decoded string column would exceed 2 GiB");
    if (strcol_room(c, 2 * n) < 0)
        return -1;
    char *o = c->data.p + c->data.len;
    for (size_t i = 0; i < n; i++) {
        o[2 * i] = HEX[s[i] >> 4];
        o[2 * i + 1] = HEX[s[i] & 15];
    }
    c->data.len += 2 * n;
    strcol_close(c);
    return 0;
}

static inline size_t
strcol_rows(const StrCol *c)
{
    return c->offs.len / sizeof(int32_t) - 1;
}

static void
strcol_mark(const StrCol *c, StrMark *m)
{
    m->data = c->data.len;
    m->offs = c->offs.len;
}

static void
strcol_restore(StrCol *c, const StrMark *m)
{
    c->data.len = m->data;
    c->offs.len = m->offs;
}

static void
strcol_free(StrCol *c)
{
    buf_free(&c->data);
    buf_free(&c->offs);
}

/* An Arrow map<string, string> column: row offsets into key and value string columns. */
typedef struct {
    StrCol k, v;
    Buf offs;
} MapCol;

typedef struct {
    StrMark k, v;
    size_t offs;
} MapMark;

static int
mapcol_init(MapCol *m)
{
    if (strcol_init(&m->k) < 0 || strcol_init(&m->v) < 0)
        return -1;
    return buf_put_i32(&m->offs, 0);
}

/* Arrow's list and map offsets are int32 too. */
static int
put_offset(Buf *b, size_t v)
{
    if (v > (size_t)INT32_MAX)
        return fail("decoded column would exceed 2**31 entries");
    return buf_put_i32(b, (int32_t)v);
}

static int
mapcol_close_row(MapCol *m)
{
    return put_offset(&m->offs, strcol_rows(&m->k));
}

static void
mapcol_mark(const MapCol *m, MapMark *mk)
{
    strcol_mark(&m->k, &mk->k);
    strcol_mark(&m->v, &mk->v);
    mk->offs = m->offs.len;
}

static void
mapcol_restore(MapCol *m, const MapMark *mk)
{
    strcol_restore(&m->k, &mk->k);
    strcol_restore(&m->v, &mk->v);
    m->offs.len = mk->offs;
}

static void
mapcol_free(MapCol *m)
{
    strcol_free(&m->k);
    strcol_free(&m->v);
    buf_free(&m->offs);
}

/* Appends a whole prepared column (a resource's or scope's attributes, repeated on every
 * span) to `dst`: one memcpy of the data and a rebased copy of the offsets. */
static int
strcol_append(StrCol *dst, const StrCol *src)
{
    size_t n = strcol_rows(src);
    size_t base = dst->data.len;
    if (src->data.len > (size_t)INT32_MAX - base)
        return fail("decoded string column would exceed 2 GiB");
    if (buf_put(&dst->data, src->data.p, src->data.len) < 0)
        return -1;
    if (buf_reserve(&dst->offs, n * sizeof(int32_t)) < 0)
        return -1;
    const int32_t *so = (const int32_t *)src->offs.p;
    int32_t *o = (int32_t *)(dst->offs.p + dst->offs.len);
    for (size_t i = 0; i < n; i++)
        o[i] = (int32_t)(base + (size_t)so[i + 1]);
    dst->offs.len += n * sizeof(int32_t);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Wire format                                                                                */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    uint32_t num;
    int wt;              /* WT_SGROUP: an unknown group, already skipped */
    uint64_t u;          /* varint, fixed64 or fixed32 value */
    const uint8_t *p;    /* length-delimited payload */
    size_t n;
} Field;

/* Protobuf's fixed-width values are little-endian, as the host usually is: then one load (gcc
 * did not merge the byte loop into one: it was a tenth of the metrics decoder's point loop). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_LITTLE_ENDIAN 1
#else
#define HOST_LITTLE_ENDIAN 0
#endif

static inline uint64_t
load_le64(const uint8_t *p)
{
    uint64_t v = 0;
#if HOST_LITTLE_ENDIAN
    memcpy(&v, p, sizeof v);
#else
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
#endif
    return v;
}

static inline uint32_t
load_le32(const uint8_t *p)
{
#if HOST_LITTLE_ENDIAN
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
#else
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
#endif
}

/* As upb: at most 10 bytes; bits past the 64th are dropped. */
static inline int
read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
    const uint8_t *p = *pp;
    if (p < end && !(*p & 0x80)) {
        *out = *p;
        *pp = p + 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end)
            return fail("truncated varint");
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = v;
            *pp = p;
            return 0;
        }
    }
    return fail("varint longer than 10 bytes");
}

/* As upb: tags and lengths are at most 5 bytes; a tag must fit in 32 bits and (outside unknown
 * groups) name a field other than 0; a length must fit in what is left of the enclosing field. */
static inline int
read_varint32(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int i = 0; i < 5; i++) {
        if (p >= end)
            return fail("truncated varint");
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = v;
            *pp = p;
            return 0;
        }
    }
    return fail("tag or length longer than 5 bytes");
}

/* `any_number`: inside an unknown group upb lets field number 0 pass (it only skips). */
static inline int
read_tag(const uint8_t **pp, const uint8_t *end, uint32_t *num, int *wt, int any_number)
{
    uint64_t v;
    const uint8_t *p = *pp;
    if (p < end && !(*p & 0x80)) {
        v = *p;
        *pp = p + 1;
    }
    else if (read_varint32(pp, end, &v) < 0)
        return -1;
    if (v > UINT32_MAX)
        return fail("tag out of range");
    if ((v >> 3) == 0 && !any_number)
        return fail("field number 0");
    *num = (uint32_t)(v >> 3);
    *wt = (int)(v & 7);
    return 0;
}

static inline int
read_len(const uint8_t **pp, const uint8_t *end, size_t *n)
{
    uint64_t v;
    const uint8_t *p = *pp;
    if (p < end && !(*p & 0x80)) {
        v = *p;
        *pp = p + 1;
    }
    else if (read_varint32(pp, end, &v) < 0)
        return -1;
    if (v > (uint64_t)(end - *pp))
        return fail("length past the end of the message");
    *n = (size_t)v;
    return 0;
}

static int skip_group(const uint8_t **pp, const uint8_t *end, uint32_t num, int depth);

static int read_value(const uint8_t **pp, const uint8_t *end, Field *f, int depth);

/* Reads one field's tag and value. */
static int __attribute__((noinline))
next_field_slow(const uint8_t **pp, const uint8_t *end, Field *f, int depth)
{
    if (read_tag(pp, end, &f->num, &f->wt, 0) < 0)
        return -1;
    return read_value(pp, end, f, depth);
}

/* Reads the value of a field whose tag was read; an unknown group is skipped whole (it may
 * hold nothing we want); a stray end-group tag, or wire type 6 or 7, is an error, as in upb. */
static int
read_value(const uint8_t **pp, const uint8_t *end, Field *f, int depth)
{
    switch (f->wt) {
    case WT_VARINT:
        return read_varint(pp, end, &f->u);
    case WT_I64:
        if (end - *pp < 8)
            return fail("truncated fixed64");
        f->u = load_le64(*pp);
        *pp += 8;
        return 0;
    case WT_LEN:
        if (read_len(pp, end, &f->n) < 0)
            return -1;
        f->p = *pp;
        *pp += f->n;
        return 0;
    case WT_SGROUP:
        return skip_group(pp, end, f->num, depth + 1);
    case WT_I32:
        if (end - *pp < 4)
            return fail("truncated fixed32");
        f->u = load_le32(*pp);
        *pp += 4;
        return 0;
    case WT_EGROUP:
        return fail("end-group tag without a group");
    default:
        return fail("invalid wire type");
    }
}

/* The common case inline: a one-byte tag (fields 1 to 15) with a one-byte varint, a
 * length under 128 or a fixed64. Anything else goes the general way. */
static inline __attribute__((always_inline)) int
next_field(const uint8_t **pp, const uint8_t *end, Field *f, int depth)
{
    const uint8_t *p = *pp;
    if (LIKELY(end - p >= 2 && p[0] < 0x80 && p[0] >= 8)) {
        f->num = p[0] >> 3;
        f->wt = p[0] & 7;
        if (f->wt == WT_LEN && p[1] < 0x80 && (size_t)p[1] <= (size_t)(end - p - 2)) {
            f->p = p + 2;
            f->n = p[1];
            *pp = p + 2 + p[1];
            return 0;
        }
        if (f->wt == WT_VARINT && p[1] < 0x80) {
            f->u = p[1];
            *pp = p + 2;
            return 0;
        }
        if (f->wt == WT_I64 && end - p >= 9) {
            f->u = load_le64(p + 1);
            *pp = p + 9;
            return 0;
        }
    }
    return next_field_slow(pp, end, f, depth);
}

/* `depth` is the group's own level. */
static int
skip_group(const uint8_t **pp, const uint8_t *end, uint32_t num, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    for (;;) {
        if (*pp >= end)
            return fail("unterminated group");
        Field f;
        if (read_tag(pp, end, &f.num, &f.wt, 1) < 0)
            return -1;
        if (f.wt == WT_EGROUP) {
            if (f.num != num)
                return fail("mismatched end-group tag");
            return 0;
        }
        if (read_value(pp, end, &f, depth) < 0)
            return -1;
    }
}

/* Strict UTF-8, as upb checks string fields: no overlong forms, surrogates or code points
 * past U+10FFFF. */
static int
utf8_valid(const uint8_t *s, size_t n)
{
    const uint8_t *end = s + n;
    while (s < end) {
        if (end - s >= 8) {
            uint64_t w;
            memcpy(&w, s, 8);
            if (!(w & 0x8080808080808080ULL)) {
                s += 8;
                continue;
            }
        }
        uint8_t c = *s;
        if (c < 0x80) {
            s++;
            continue;
        }
        if (c < 0xC2)
            return 0;
        if (c < 0xE0) {
            if (end - s < 2 || (s[1] & 0xC0) != 0x80)
                return 0;
            s += 2;
            continue;
        }
        if (c < 0xF0) {
            if (end - s < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
                return 0;
            if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0))
                return 0;
            s += 3;
            continue;
        }
        if (c < 0xF5) {
            if (end - s < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 ||
                (s[3] & 0xC0) != 0x80)
                return 0;
            if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90))
                return 0;
            s += 4;
            continue;
        }
        return 0;
    }
    return 1;
}

/* Most strings are ASCII: OR their words together (the last one overlapping) and look at the
 * high bits once, before walking them byte by byte. */
static inline int
check_utf8(const Field *f)
{
    const uint8_t *s = f->p;
    size_t n = f->n;
    if (n >= 8) {
        uint64_t acc = 0, w;
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&w, s + i, 8);
            acc |= w;
        }
        memcpy(&w, s + n - 8, 8);
        if (!((acc | w) & 0x8080808080808080ULL))
            return 0;
    }
    else {
        unsigned acc = 0;
        for (size_t i = 0; i < n; i++)
            acc |= s[i];
        if (!(acc & 0x80))
            return 0;
    }
    return utf8_valid(s, n) ? 0 : fail("string field is not valid UTF-8");
}

/* ------------------------------------------------------------------------------------------ */
/* Validation of the parts that are not decoded here                                          */
/* ------------------------------------------------------------------------------------------ */

/* The message types of trace_service.proto, trace.proto, resource.proto and common.proto. */
enum {
    MSG_REQUEST,
    MSG_RESOURCE_SPANS,
    MSG_RESOURCE,
    MSG_ENTITY_REF,
    MSG_SCOPE_SPANS,
    MSG_SCOPE,
    MSG_SPAN,
    MSG_EVENT,
    MSG_LINK,
    MSG_STATUS,
    MSG_KEY_VALUE,
    MSG_ANY_VALUE,
    MSG_ARRAY_VALUE,
    MSG_KEY_VALUE_LIST,
    /* metrics.proto, for the data of a Metric that a later oneof member replaced */
    MSG_GAUGE,
    MSG_SUM,
    MSG_HISTOGRAM,
    MSG_EXP_HISTOGRAM,
    MSG_SUMMARY,
    MSG_NUMBER_POINT,
    MSG_HISTOGRAM_POINT,
    MSG_EXP_HISTOGRAM_POINT,
    MSG_BUCKETS,
    MSG_SUMMARY_POINT,
    MSG_EXEMPLAR,
    MSG_QUANTILE, /* doubles only: its wire format is all there is to check */
};
#define LEN_BYTES (-1) /* bytes field or unknown field: nothing to check inside */
#define LEN_STRING (-2)
#define LEN_PACKED_FIXED64 (-3) /* a packed repeated fixed64/double: a multiple of 8 bytes */
#define LEN_PACKED_VARINT (-4)  /* a packed repeated uint64: whole varints */

/* What a length-delimited field of a message holds: a string (UTF-8 checked), a message
 * (checked recursively) or opaque bytes. Other wire types carry nothing to check. */
static int
len_field_kind(int msg, uint32_t num)
{
    switch (msg) {
    case MSG_REQUEST:
        return num == 1 ? MSG_RESOURCE_SPANS : LEN_BYTES;
    case MSG_RESOURCE_SPANS:
        return num == 1 ? MSG_RESOURCE
             : num == 2 ? MSG_SCOPE_SPANS
             : num == 3 ? LEN_STRING
                        : LEN_BYTES;
    case MSG_RESOURCE:
        return num == 1 ? MSG_KEY_VALUE : num == 3 ? MSG_ENTITY_REF : LEN_BYTES;
    case MSG_ENTITY_REF: /* schema_url, type, id_keys, description_keys */
        return (num >= 1 && num <= 4) ? LEN_STRING : LEN_BYTES;
    case MSG_SCOPE_SPANS:
        return num == 1 ? MSG_SCOPE
             : num == 2 ? MSG_SPAN
             : num == 3 ? LEN_STRING
                        : LEN_BYTES;
    case MSG_SCOPE:
        return (num == 1 || num == 2) ? LEN_STRING : num == 3 ? MSG_KEY_VALUE : LEN_BYTES;
    case MSG_SPAN:
        switch (num) {
        case 3:
        case 5:
            return LEN_STRING;
        case 9:
            return MSG_KEY_VALUE;
        case 11:
            return MSG_EVENT;
        case 13:
            return MSG_LINK;
        case 15:
            return MSG_STATUS;
        default:
            return LEN_BYTES;
        }
    case MSG_EVENT:
        return num == 2 ? LEN_STRING : num == 3 ? MSG_KEY_VALUE : LEN_BYTES;
    case MSG_LINK:
        return num == 3 ? LEN_STRING : num == 4 ? MSG_KEY_VALUE : LEN_BYTES;
    case MSG_STATUS:
        return num == 2 ? LEN_STRING : LEN_BYTES;
    case MSG_KEY_VALUE:
        return num == 1 ? LEN_STRING : num == 2 ? MSG_ANY_VALUE : LEN_BYTES;
    case MSG_ANY_VALUE:
        return num == 1 ? LEN_STRING
             : num == 5 ? MSG_ARRAY_VALUE
             : num == 6 ? MSG_KEY_VALUE_LIST
                        : LEN_BYTES;
    case MSG_ARRAY_VALUE:
        return num == 1 ? MSG_ANY_VALUE : LEN_BYTES;
    case MSG_KEY_VALUE_LIST:
        return num == 1 ? MSG_KEY_VALUE : LEN_BYTES;
    case MSG_GAUGE:
    case MSG_SUM:
    case MSG_HISTOGRAM:
    case MSG_EXP_HISTOGRAM:
    case MSG_SUMMARY:
        if (num != 1)
            return LEN_BYTES;
        return msg == MSG_HISTOGRAM       ? MSG_HISTOGRAM_POINT
             : msg == MSG_EXP_HISTOGRAM ? MSG_EXP_HISTOGRAM_POINT
             : msg == MSG_SUMMARY       ? MSG_SUMMARY_POINT
                                        : MSG_NUMBER_POINT;
    case MSG_NUMBER_POINT:
        return num == 7 ? MSG_KEY_VALUE : num == 5 ? MSG_EXEMPLAR : LEN_BYTES;
    case MSG_HISTOGRAM_POINT:
        return num == 9   ? MSG_KEY_VALUE
             : num == 8   ? MSG_EXEMPLAR
             : (num == 6 || num == 7) ? LEN_PACKED_FIXED64
                                      : LEN_BYTES;
    case MSG_EXP_HISTOGRAM_POINT:
        return num == 1 ? MSG_KEY_VALUE
             : num == 11 ? MSG_EXEMPLAR
             : (num == 8 || num == 9) ? MSG_BUCKETS
                                      : LEN_BYTES;
    case MSG_BUCKETS:
        return num == 2 ? LEN_PACKED_VARINT : LEN_BYTES;
    case MSG_SUMMARY_POINT:
        return num == 7 ? MSG_KEY_VALUE : num == 6 ? MSG_QUANTILE : LEN_BYTES;
    case MSG_EXEMPLAR:
        return num == 7 ? MSG_KEY_VALUE : LEN_BYTES;
    default:
        return LEN_BYTES;
    }
}

/* Checks a message of type `msg` at nesting level `depth` as upb would parse it. */
static int
validate_msg(const uint8_t *p, const uint8_t *end, int msg, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.wt != WT_LEN)
            continue;
        int kind = len_field_kind(msg, f.num);
        if (kind == LEN_STRING) {
            if (check_utf8(&f) < 0)
                return -1;
        }
        else if (kind == LEN_PACKED_FIXED64) {
            if (f.n % 8)
                return fail("packed fixed64 field of bad length");
        }
        else if (kind == LEN_PACKED_VARINT) {
            const uint8_t *q = f.p, *qend = f.p + f.n;
            uint64_t v;
            while (q < qend)
                if (read_varint(&q, qend, &v) < 0)
                    return -1;
        }
        else if (kind >= 0) {
            if (validate_msg(f.p, f.p + f.n, kind, depth + 1) < 0)
                return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Attribute lists                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* One rendered key/value pair. Keys and string values point into the request (no copy);
 * other rendered values live in the list's scratch buffer, which may move as it grows, so
 * they are kept as an offset (v == NULL). */
typedef struct {
    const char *k;
    size_t klen;
    const char *v;
    size_t voff, vlen;
} Pair;

typedef struct {
    Pair *items;
    size_t n, cap;
    size_t seen; /* KeyValues met, kept or dropped: the attribute count limit applies to it */
    Buf scratch;
} PairList;

static void
pairs_reset(PairList *pl)
{
    pl->n = 0;
    pl->seen = 0;
    pl->scratch.len = 0;
}

static Pair *
pairs_push(PairList *pl)
{
    if (pl->n == pl->cap) {
        size_t cap = pl->cap ? pl->cap * 2 : 16;
        Pair *items = realloc(pl->items, cap * sizeof(Pair)); /* no PyMem: runs without the GIL */
        if (items == NULL) {
            no_memory();
            return NULL;
        }
        pl->items = items;
        pl->cap = cap;
    }
    Pair *pr = &pl->items[pl->n++];
    memset(pr, 0, sizeof *pr);
    return pr;
}

static inline const char *
pair_value(const PairList *pl, const Pair *pr)
{
    return pr->v ? pr->v : pl->scratch.p + pr->voff;
}

static inline uint64_t
hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
    return h;
}

static inline int
same_key(const Pair *a, const Pair *b)
{
    return a->klen == b->klen && memcmp(a->k, b->k, a->klen) == 0;
}

/* Repeated keys collapse as in AttributeRenderer: the pair keeps the position of the key's
 * first occurrence and the value of its last. Short lists (the usual case) compare pairwise;
 * long ones (max_attributes may be configured high) use a hash table, to stay linear. */
static int
pairs_dedupe(PairList *pl)
{
    size_t n = pl->n, out = 0;
    if (n < 2)
        return 0;
    Pair *it = pl->items;
    if (n <= 32) {
        for (size_t j = 0; j < n; j++) {
            size_t i = 0;
            while (i < out && !same_key(&it[i], &it[j]))
                i++;
            if (i < out) {
                it[i].v = it[j].v;
                it[i].voff = it[j].voff;
                it[i].vlen = it[j].vlen;
            }
            else
                it[out++] = it[j];
        }
        pl->n = out;
        return 0;
    }
    size_t size = 64;
    while (size < 2 * n)
        size *= 2;
    size_t *slots = calloc(size, sizeof(size_t)); /* index + 1; 0 is empty */
    if (slots == NULL)
        return no_memory();
    for (size_t j = 0; j < n; j++) {
        size_t h = (size_t)hash_bytes(it[j].k, it[j].klen) & (size - 1);
        while (slots[h] && !same_key(&it[slots[h] - 1], &it[j]))
            h = (h + 1) & (size - 1);
        if (slots[h]) {
            Pair *first = &it[slots[h] - 1];
            first->v = it[j].v;
            first->voff = it[j].voff;
            first->vlen = it[j].vlen;
        }
        else {
            it[out] = it[j];
            slots[h] = ++out;
        }
    }
    free(slots);
    pl->n = out;
    return 0;
}

/* Dedupes the list and appends it as the next row of a map column. */
static int
pairs_to_row(PairList *pl, MapCol *m)
{
    if (pairs_dedupe(pl) < 0)
        return -1;
    for (size_t i = 0; i < pl->n; i++) {
        const Pair *pr = &pl->items[i];
        if (strcol_add(&m->k, pr->k, pr->klen) < 0 ||
            strcol_add(&m->v, pair_value(pl, pr), pr->vlen) < 0)
            return -1;
    }
    return mapcol_close_row(m);
}

static void
pairs_free(PairList *pl)
{
    free(pl->items);
    pl->items = NULL;
    buf_free(&pl->scratch);
}

/* ------------------------------------------------------------------------------------------ */
/* The decoder                                                                                */
/* ------------------------------------------------------------------------------------------ */

/* Fixed-width columns. */
enum { N_TIMESTAMP, N_DURATION, N_FLAGS, N_EVENT_TIME, N_EVENT_OFFSETS, N_LINK_OFFSETS, N_NUM };
/* String columns. */
enum {
    S_TRACE_ID,
    S_SPAN_ID,
    S_PARENT_SPAN_ID,
    S_TRACE_STATE,
    S_SPAN_NAME,
    S_SPAN_KIND,
    S_SERVICE_NAME,
    S_SCOPE_NAME,
    S_SCOPE_VERSION,
    S_STATUS_CODE,
    S_STATUS_MESSAGE,
    S_EVENT_NAME,
    S_LINK_TRACE_ID,
    S_LINK_SPAN_ID,
    S_LINK_TRACE_STATE,
    N_STR
};
/* Map columns. */
enum { A_RESOURCE, A_SCOPE, A_SPAN, A_EVENT, A_LINK, N_MAP };

/* The llmops side batch's columns (opstrata.otlp.decode_traces.LLM_SPANS, in its order:
 * Timestamp, TraceId, SpanId, ServiceName, SpanAttributes, Duration, StatusCode,
 * StatusMessage, Events, ResourceAttributes). */
enum { SN_TIMESTAMP, SN_DURATION, SN_EVENT_TIME, SN_EVENT_OFFSETS, SN_NUM };
enum { SS_TRACE_ID, SS_SPAN_ID, SS_SERVICE_NAME, SS_STATUS_CODE, SS_STATUS_MESSAGE, SS_EVENT_NAME,
       SS_NUM };
enum { SA_SPAN, SA_RESOURCE, SA_EVENT, SA_NUM };

/* The reasons a span is rejected; the Python wrapper holds their texts, in this order. */
enum { R_TRACE_ID, R_SPAN_ID, R_PARENT_SPAN_ID, R_TIMESTAMP };

typedef struct {
    size_t max_attributes, max_value_chars;
    PyObject *render_complex; /* callable(serialized KeyValue) -> (str, number of cuts) */

    Buf num[N_NUM];
    StrCol str[N_STR];
    MapCol map[N_MAP];

    /* Attribute lists being read; one per kind, as an event's list is read inside a span's. */
    PairList res_pairs, scope_pairs, span_pairs, event_pairs, link_pairs;
    /* The current resource's and scope's attributes, rendered once, copied onto each span. */
    StrCol res_keys, res_values, scope_keys, scope_values;
    Buf service_name;
    const char *scope_name, *scope_version;
    size_t scope_name_len, scope_version_len;

    Py_ssize_t rejected, dropped_attributes, truncated_values;
    int first_reason;
    Buf llm_rows; /* int32 rows of spans with an LLM-convention key: see mark_llm_span */
    /* int32 rows where each ResourceSpans' / ResourceLogs' rows start (only resources with
     * rows), so that the store and the topology consumer need not find the runs of one
     * resource again by comparing rows (the metrics decoder keeps its own, one per table). */
    Buf resource_starts;
    /* The llmops side batch (see "The LLM side batch"): only when asked for, and set up at the
     * first marked span (side_ready). */
    int side_on, side_ready;
    size_t input_len;
    Buf side_num[SN_NUM];
    StrCol side_str[SS_NUM];
    MapCol side_map[SA_NUM];
} Dec;

/* ---- AnyValue rendering ---- */

enum { AV_NONE, AV_STRING, AV_BOOL, AV_INT, AV_DOUBLE, AV_BYTES, AV_COMPLEX };

typedef struct {
    int kind;
    const uint8_t *p; /* string or bytes */
    size_t n;
    uint64_t u; /* bool, int or double bits */
} AnyValue;

/* Reads one AnyValue occurrence into `av`; occurrences of the same KeyValue.value merge, and
 * the oneof member seen last wins, as in upb. */
static int
dec_anyvalue(const uint8_t *p, const uint8_t *end, AnyValue *av, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        switch (f.num) {
        case 1:
            if (f.wt == WT_LEN) {
                if (check_utf8(&f) < 0)
                    return -1;
                av->kind = AV_STRING;
                av->p = f.p;
                av->n = f.n;
            }
            break;
        case 2:
        case 3:
            if (f.wt == WT_VARINT) {
                av->kind = f.num == 2 ? AV_BOOL : AV_INT;
                av->u = f.u;
            }
            break;
        case 4:
            if (f.wt == WT_I64) {
                av->kind = AV_DOUBLE;
                av->u = f.u;
            }
            break;
        case 5:
        case 6:
            if (f.wt == WT_LEN) {
                int msg = f.num == 5 ? MSG_ARRAY_VALUE : MSG_KEY_VALUE_LIST;
                if (validate_msg(f.p, f.p + f.n, msg, depth + 1) < 0)
                    return -1;
                av->kind = AV_COMPLEX;
            }
            break;
        case 7:
            if (f.wt == WT_LEN) {
                av->kind = AV_BYTES;
                av->p = f.p;
                av->n = f.n;
            }
            break;
        case 8: /* string_value_strindex: rendered by Python, like arrays and maps */
            if (f.wt == WT_VARINT)
                av->kind = AV_COMPLEX;
            break;
        default:
            break;
        }
    }
    return 0;
}

static size_t
fmt_i64(char *out, int64_t v)
{
    char tmp[24];
    size_t n = 0;
    uint64_t m = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    size_t len = 0;
    if (v < 0)
        out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    return len;
}

/* Bytes of the first `max_chars` characters of valid UTF-8, or all of it. */
static size_t
utf8_prefix(const uint8_t *s, size_t n, size_t max_chars)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            if (chars == max_chars)
                return i;
            chars++;
        }
    }
    return n;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 with padding, as base64.b64encode, cut to max_value_chars. Only the input
 * that the cut keeps is encoded, so a huge bytes value costs no more than a short one. */
static int
render_bytes(Dec *d, PairList *pl, Pair *pr, const uint8_t *s, size_t n)
{
    size_t full = 4 * (n / 3 + (n % 3 != 0));
    size_t keep = full;
    if (full > d->max_value_chars) {
        keep = d->max_value_chars;
        d->truncated_values++;
        size_t need = (keep / 4 + 1) * 3;
        if (need < n)
            n = need;
    }
    size_t enc = 4 * (n / 3 + (n % 3 != 0));
    if (buf_reserve(&pl->scratch, enc) < 0)
        return -1;
    char *o = pl->scratch.p + pl->scratch.len;
    size_t i = 0, j = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        o[j++] = B64[v >> 18];
        o[j++] = B64[(v >> 12) & 63];
        o[j++] = B64[(v >> 6) & 63];
        o[j++] = B64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
        o[j++] = B64[v >> 18];
        o[j++] = B64[(v >> 12) & 63];
        o[j++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        o[j++] = '=';
    }
    pr->voff = pl->scratch.len;
    pr->vlen = keep < j ? keep : j;
    pl->scratch.len += j;
    return 0;
}

#include "_wire_double.c"

/* As anyvalue._float_text: NaN, +Inf, -Inf, integral values under 1e16 as integers, and
 * otherwise Python's repr() (fmt_double_repr: the same text, without Python). */
static int
render_double(PairList *pl, Pair *pr, double x)
{
    char small[32];
    const char *s = small;
    size_t n;
    if (isnan(x)) {
        s = "NaN";
        n = 3;
    }
    else if (isinf(x)) {
        s = x > 0 ? "+Inf" : "-Inf";
        n = 4;
    }
    else if (x == floor(x) && fabs(x) < 1e16) {
        n = fmt_i64(small, (int64_t)x);
    }
    else {
        n = fmt_double_repr(small, x);
    }
    pr->voff = pl->scratch.len;
    pr->vlen = n;
    return buf_put(&pl->scratch, s, n);
}

/* Array, map and strindex values: the Python callback parses the serialized KeyValue (so
 * upb's merge rules apply) and renders it with render_anyvalue. Takes the GIL for the call if
 * the parse runs without it, and keeps it for the rest of the parse: under load each take waits
 * for whichever thread took the GIL (up to a switch interval), and a request with an array
 * value on every item would wait once per item. */
static int
render_complex(Dec *d, PairList *pl, Pair *pr, const uint8_t *kv, size_t n)
{
    gil_take();
    PyObject *raw = PyBytes_FromStringAndSize((const char *)kv, (Py_ssize_t)n);
    if (raw == NULL)
        return -1;
    PyObject *res = PyObject_CallOneArg(d->render_complex, raw);
    Py_DECREF(raw);
    if (res == NULL)
        return -1;
    int rc = -1;
    if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(res, 0))) {
        PyErr_SetString(PyExc_TypeError, "render_complex must return (str, int)");
        goto done;
    }
    Py_ssize_t cuts = PyLong_AsSsize_t(PyTuple_GET_ITEM(res, 1));
    if (cuts == -1 && PyErr_Occurred())
        goto done;
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(res, 0), &len);
    if (s == NULL)
        goto done;
    pr->voff = pl->scratch.len;
    pr->vlen = (size_t)len;
    if (buf_put(&pl->scratch, s, (size_t)len) < 0)
        goto done;
    d->truncated_values += cuts;
    rc = 0;
done:
    Py_DECREF(res);
    return rc;
}

/* The stored string of a read AnyValue into `pr` (whose key is set by the caller). `kv`/`kv_len`
 * is a serialized KeyValue holding the value, for the Python callback (arrays, maps, strindex).
 * Inlined: it runs for every attribute, and a call here cost the span decoder ~5 %. */
static inline __attribute__((always_inline)) int
render_value(Dec *d, PairList *pl, Pair *pr, const AnyValue *avp, const uint8_t *kv, size_t kv_len)
{
    AnyValue av = *avp;
    switch (av.kind) {
    case AV_NONE:
        pr->v = "";
        return 0;
    case AV_STRING:
        pr->v = (const char *)av.p;
        pr->vlen = av.n;
        /* Characters never outnumber bytes: only a long value needs counting. */
        if (av.n > d->max_value_chars) {
            size_t cut = utf8_prefix(av.p, av.n, d->max_value_chars);
            if (cut < av.n) {
                pr->vlen = cut;
                d->truncated_values++;
            }
        }
        return 0;
    case AV_BOOL:
        pr->v = av.u ? "true" : "false";
        pr->vlen = av.u ? 4 : 5;
        return 0;
    case AV_INT: {
        char tmp[24];
        size_t n = fmt_i64(tmp, (int64_t)av.u);
        pr->voff = pl->scratch.len;
        pr->vlen = n;
        return buf_put(&pl->scratch, tmp, n);
    }
    case AV_DOUBLE: {
        double x;
        memcpy(&x, &av.u, sizeof x);
        return render_double(pl, pr, x);
    }
    case AV_BYTES:
        return render_bytes(d, pl, pr, av.p, av.n);
    default:
        return render_complex(d, pl, pr, kv, kv_len);
    }
}

/* One KeyValue at level `depth`, rendered into a new pair of `pl`. */
static int
dec_keyvalue(Dec *d, PairList *pl, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    const uint8_t *start = p;
    const uint8_t *key = (const uint8_t *)"";
    size_t key_len = 0;
    AnyValue av = {AV_NONE, NULL, 0, 0};
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.wt != WT_LEN)
            continue;
        if (f.num == 1) {
            if (check_utf8(&f) < 0)
                return -1;
            key = f.p;
            key_len = f.n;
        }
        else if (f.num == 2) {
            if (dec_anyvalue(f.p, f.p + f.n, &av, depth + 1) < 0)
                return -1;
        }
    }
    Pair *pr = pairs_push(pl);
    if (pr == NULL)
        return -1;
    pr->k = (const char *)key;
    pr->klen = key_len;
    return render_value(d, pl, pr, &av, start, (size_t)(end - start));
}

/* An element of a repeated attributes field: rendered while under the attribute count limit,
 * otherwise counted as dropped and only checked. */
static int
dec_attribute(Dec *d, PairList *pl, const Field *f, int depth)
{
    if (pl->seen >= d->max_attributes) {
        d->dropped_attributes++;
        return validate_msg(f->p, f->p + f->n, MSG_KEY_VALUE, depth);
    }
    pl->seen++;
    return dec_keyvalue(d, pl, f->p, f->p + f->n, depth);
}

/* ---- Messages ---- */

static int
all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* An id as lower-case hex; the all-zero (or empty) id, meaning "absent", as "". */
static int
add_hex_or_empty(StrCol *c, const uint8_t *p, size_t n)
{
    return all_zero(p, n) ? strcol_add(c, "", 0) : strcol_add_hex(c, p, n);
}

static int
dec_event(Dec *d, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    uint64_t time = 0;
    const uint8_t *name = (const uint8_t *)"";
    size_t name_len = 0;
    PairList *pl = &d->event_pairs;
    pairs_reset(pl);
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == 1 && f.wt == WT_I64)
            time = f.u;
        else if (f.num == 2 && f.wt == WT_LEN) {
            if (check_utf8(&f) < 0)
                return -1;
            name = f.p;
            name_len = f.n;
        }
        else if (f.num == 3 && f.wt == WT_LEN) {
            if (dec_attribute(d, pl, &f, depth + 1) < 0)
                return -1;
        }
    }
    if (time > MAX_TIMESTAMP_NS)
        time = MAX_TIMESTAMP_NS;
    if (buf_put_i64(&d->num[N_EVENT_TIME], (int64_t)time) < 0 ||
        strcol_add(&d->str[S_EVENT_NAME], (const char *)name, name_len) < 0)
        return -1;
    return pairs_to_row(pl, &d->map[A_EVENT]);
}

static int
dec_link(Dec *d, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    const uint8_t *empty = (const uint8_t *)"";
    const uint8_t *trace = empty, *span = empty, *state = empty;
    size_t trace_len = 0, span_len = 0, state_len = 0;
    PairList *pl = &d->link_pairs;
    pairs_reset(pl);
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.wt != WT_LEN)
            continue;
        switch (f.num) {
        case 1:
            trace = f.p;
            trace_len = f.n;
            break;
        case 2:
            span = f.p;
            span_len = f.n;
            break;
        case 3:
            if (check_utf8(&f) < 0)
                return -1;
            state = f.p;
            state_len = f.n;
            break;
        case 4:
            if (dec_attribute(d, pl, &f, depth + 1) < 0)
                return -1;
            break;
        default:
            break;
        }
    }
    if (add_hex_or_empty(&d->str[S_LINK_TRACE_ID], trace, trace_len) < 0 ||
        add_hex_or_empty(&d->str[S_LINK_SPAN_ID], span, span_len) < 0 ||
        strcol_add(&d->str[S_LINK_TRACE_STATE], (const char *)state, state_len) < 0)
        return -1;
    return pairs_to_row(pl, &d->map[A_LINK]);
}

/* Where a span started writing to the event and link columns, and the tallies then: a
 * rejected span is undone, as decode_traces never looks inside one. */
typedef struct {
    size_t event_time;
    StrMark event_name, link_trace_id, link_span_id, link_trace_state;
    MapMark event_attrs, link_attrs;
    Py_ssize_t dropped, truncated;
} SpanMark;

static void
span_mark(const Dec *d, SpanMark *m)
{
    m->event_time = d->num[N_EVENT_TIME].len;
    strcol_mark(&d->str[S_EVENT_NAME], &m->event_name);
    strcol_mark(&d->str[S_LINK_TRACE_ID], &m->link_trace_id);
    strcol_mark(&d->str[S_LINK_SPAN_ID], &m->link_span_id);
    strcol_mark(&d->str[S_LINK_TRACE_STATE], &m->link_trace_state);
    mapcol_mark(&d->map[A_EVENT], &m->event_attrs);
    mapcol_mark(&d->map[A_LINK], &m->link_attrs);
    m->dropped = d->dropped_attributes;
    m->truncated = d->truncated_values;
}

static void
span_restore(Dec *d, const SpanMark *m)
{
    d->num[N_EVENT_TIME].len = m->event_time;
    strcol_restore(&d->str[S_EVENT_NAME], &m->event_name);
    strcol_restore(&d->str[S_LINK_TRACE_ID], &m->link_trace_id);
    strcol_restore(&d->str[S_LINK_SPAN_ID], &m->link_span_id);
    strcol_restore(&d->str[S_LINK_TRACE_STATE], &m->link_trace_state);
    mapcol_restore(&d->map[A_EVENT], &m->event_attrs);
    mapcol_restore(&d->map[A_LINK], &m->link_attrs);
    d->dropped_attributes = m->dropped;
    d->truncated_values = m->truncated;
}

static const char *const SPAN_KINDS[] = {
    "Unspecified", "Internal", "Server", "Client", "Producer", "Consumer"};
static const char *const STATUS_CODES[] = {"Unset", "Ok", "Error"};

/* An enum as its Collector name, or in decimal when it is outside the known names. */
static int
add_enum(StrCol *c, int32_t v, const char *const *names, int count)
{
    if (v >= 0 && v < count)
        return strcol_add(c, names[v], strlen(names[v]));
    char tmp[24];
    return strcol_add(c, tmp, fmt_i64(tmp, v));
}

static int
dec_status(const uint8_t *p, const uint8_t *end, const uint8_t **msg, size_t *msg_len,
           int32_t *code, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == 2 && f.wt == WT_LEN) {
            if (check_utf8(&f) < 0)
                return -1;
            *msg = f.p;
            *msg_len = f.n;
        }
        else if (f.num == 3 && f.wt == WT_VARINT)
            *code = (int32_t)(uint32_t)f.u; /* an int32 enum keeps the low 32 bits */
    }
    return 0;
}

typedef struct {
    const uint8_t *p;
    size_t n;
} Bytes;

/* A hint for the llmops plugin, which otherwise looks up every attribute key of every span: the
 * rows of spans whose stored attributes have a key of an LLM convention (gen_ai.*, llm.*,
 * openinference.*, traceloop.*). The keys are in hand here, so it costs a byte compare per key;
 * decode_traces() gives the same rows (decode_traces.llm_rows). */
static inline int
is_llm_key(const char *k, size_t n)
{
    switch (n ? k[0] : 0) {
    case 'g':
        return n >= 7 && memcmp(k, "gen_ai.", 7) == 0;
    case 'l':
        return n >= 4 && memcmp(k, "llm.", 4) == 0;
    case 'o':
        return n >= 14 && memcmp(k, "openinference.", 14) == 0;
    case 't':
        return n >= 10 && memcmp(k, "traceloop.", 10) == 0;
    default:
        return 0;
    }
}

/* 1 when the span is marked, 0 when not, -1 on error. */
static int
mark_llm_span(Dec *d, const PairList *pl)
{
    for (size_t i = 0; i < pl->n; i++)
        if (is_llm_key(pl->items[i].k, pl->items[i].klen)) {
            size_t row = d->num[N_TIMESTAMP].len / sizeof(int64_t) - 1;
            return buf_put_i32(&d->llm_rows, (int32_t)row) < 0 ? -1 : 1;
        }
    return 0;
}

/* ---- The LLM side batch ----
 *
 * The llmops plugin reads a few columns of the marked spans only, and of their attributes only
 * the LLM conventions' keys and a few named ones. Taking those rows out of the kept batches
 * (whole requests) cost it a third of its time: Arrow's take of a map column first joins every
 * chunk, every span's attributes. So when asked (decode_traces' llm_spans argument, set while
 * the plugin runs), the decoder copies what the plugin reads of each marked span into a second,
 * small batch as it goes: the keys are in hand here, and the copy is a memcpy per value. The
 * kept keys are is_llm_key's and SIDE_KEYS (decode_traces.LLM_SIDE_KEYS, which a test holds
 * equal to what recognition reads); the entries keep their order. */
static const struct {
    const char *k;
    size_t n;
} SIDE_KEYS[] = {
    {"session.id", 10}, {"user.id", 7}, {"enduser.id", 10}, {"error.type", 10}, {"event.name", 10},
};

static inline int
is_side_key(const char *k, size_t n)
{
    if (is_llm_key(k, n))
        return 1;
    for (size_t i = 0; i < sizeof SIDE_KEYS / sizeof SIDE_KEYS[0]; i++)
        if (n == SIDE_KEYS[i].n && memcmp(k, SIDE_KEYS[i].k, n) == 0)
            return 1;
    return 0;
}

/* Appends rows [from, to) of `src` to `dst`: one memcpy of their data, offsets rebased. */
static int
strcol_copy_rows(StrCol *dst, const StrCol *src, size_t from, size_t to)
{
    if (to <= from)
        return 0;
    const int32_t *so = (const int32_t *)src->offs.p;
    size_t start = (size_t)so[from], stop = (size_t)so[to];
    size_t base = dst->data.len;
    if (stop - start > (size_t)INT32_MAX - base)
        return fail("decoded string column would exceed 2 GiB");
    if (buf_put(&dst->data, src->data.p + start, stop - start) < 0 ||
        buf_reserve(&dst->offs, (to - from) * sizeof(int32_t)) < 0)
        return -1;
    int32_t *o = (int32_t *)(dst->offs.p + dst->offs.len);
    for (size_t i = 0; i < to - from; i++)
        o[i] = (int32_t)(base + (size_t)so[from + 1 + i] - start);
    dst->offs.len += (to - from) * sizeof(int32_t);
    return 0;
}

/* Appends map rows [from, to) of `src` to `dst`. */
static int
mapcol_copy_rows(MapCol *dst, const MapCol *src, size_t from, size_t to)
{
    if (to <= from)
        return 0;
    const int32_t *ro = (const int32_t *)src->offs.p;
    size_t first = (size_t)ro[from], base = strcol_rows(&dst->k);
    if (strcol_copy_rows(&dst->k, &src->k, first, (size_t)ro[to]) < 0 ||
        strcol_copy_rows(&dst->v, &src->v, first, (size_t)ro[to]) < 0)
        return -1;
    for (size_t i = from + 1; i <= to; i++)
        if (put_offset(&dst->offs, base + (size_t)ro[i] - first) < 0)
            return -1;
    return 0;
}

static int
side_init(Dec *d)
{
    for (int i = 0; i < SS_NUM; i++)
        if (strcol_init(&d->side_str[i]) < 0)
            return -1;
    for (int i = 0; i < SA_NUM; i++)
        if (mapcol_init(&d->side_map[i]) < 0)
            return -1;
    return buf_put_i32(&d->side_num[SN_EVENT_OFFSETS], 0);
}

static void
side_free(Dec *d)
{
    for (int i = 0; i < SN_NUM; i++)
        buf_free(&d->side_num[i]);
    for (int i = 0; i < SS_NUM; i++)
        strcol_free(&d->side_str[i]);
    for (int i = 0; i < SA_NUM; i++)
        mapcol_free(&d->side_map[i]);
}

/* The side columns are one run of Bufs too, hinted as the span columns are (hints_presize):
 * grown from 256 bytes by doubling, a request's ~30 of them cost ~200 reallocs. */
#define SIDE_BUFS (SN_NUM + 2 * SS_NUM + 5 * SA_NUM)
_Static_assert(offsetof(Dec, side_map) + sizeof(((Dec *)0)->side_map) ==
                   offsetof(Dec, side_num) + SIDE_BUFS * sizeof(Buf),
               "Dec's side columns are not one run of Bufs");
_Static_assert(SIDE_BUFS <= MAX_HINTED_BUFS, "raise MAX_HINTED_BUFS");
static size_t side_hints[SIDE_BUFS];
static size_t side_hint_input;

#define SIDE_KEEP_BYTES (1 << 20) /* a scratch buffer larger than this is given back */

/* The side columns as one run of Bufs, in Dec's order (side_num, side_str, side_map). */
typedef struct {
    Buf num[SN_NUM];
    StrCol str[SS_NUM];
    MapCol map[SA_NUM];
} SideCols;
_Static_assert(sizeof(SideCols) == SIDE_BUFS * sizeof(Buf), "SideCols is not a run of Bufs");

static _Thread_local SideCols side_scratch;

static inline Buf *
side_run(Dec *d)
{
    return d->side_num;
}

/* Takes the thread's scratch buffers as d's side columns (emptied). */
static void
side_take_scratch(Dec *d)
{
    Buf *run = side_run(d), *keep = (Buf *)&side_scratch;
    for (int i = 0; i < SIDE_BUFS; i++) {
        run[i] = keep[i];
        run[i].len = 0;
        keep[i].p = NULL;
        keep[i].len = keep[i].cap = 0;
    }
}

/* Gives d's side columns back to the thread's scratch (the big ones are freed). */
static void
side_keep_scratch(Dec *d)
{
    Buf *run = side_run(d), *keep = (Buf *)&side_scratch;
    for (int i = 0; i < SIDE_BUFS; i++) {
        if (keep[i].p == NULL && run[i].cap <= SIDE_KEEP_BYTES) {
            keep[i] = run[i];
            keep[i].len = 0;
        }
        else
            free(run[i].p);
        run[i].p = NULL;
        run[i].len = run[i].cap = 0;
    }
}

/* A request's side columns as they leave the decoder (see "Handing side batches over"). */
#define SIDE_CAPSULE "opstrata.otlp.llm_side"

typedef struct {
    size_t rows, bytes;
    size_t off[SIDE_BUFS], len[SIDE_BUFS];
    char data[]; /* each buffer at an 8-byte aligned offset */
} SideBlock;

static inline size_t
side_rows(const Dec *d)
{
    return d->side_num[SN_TIMESTAMP].len / sizeof(int64_t);
}

/* The marked span just stored (its row the last of every span column; its events from
 * `first_event` on) into the side batch. */
static int
side_add(Dec *d, const PairList *pl, size_t first_event)
{
    if (!d->side_ready) { /* the request's first marked span */
        side_take_scratch(d);
        if (side_init(d) < 0)
            return -1;
        hints_presize(side_hints, &side_hint_input, d->side_num, SIDE_BUFS, SN_TIMESTAMP,
                      d->input_len);
        d->side_ready = 1;
    }
    size_t row = d->num[N_TIMESTAMP].len / sizeof(int64_t) - 1;
    size_t events = d->num[N_EVENT_TIME].len / sizeof(int64_t);
    const StrCol *s = d->str;
    StrCol *o = d->side_str;
    MapCol *m = d->side_map;
    if (buf_put(&d->side_num[SN_TIMESTAMP], d->num[N_TIMESTAMP].p + 8 * row, 8) < 0 ||
        buf_put(&d->side_num[SN_DURATION], d->num[N_DURATION].p + 8 * row, 8) < 0 ||
        strcol_copy_rows(&o[SS_TRACE_ID], &s[S_TRACE_ID], row, row + 1) < 0 ||
        strcol_copy_rows(&o[SS_SPAN_ID], &s[S_SPAN_ID], row, row + 1) < 0 ||
        strcol_copy_rows(&o[SS_SERVICE_NAME], &s[S_SERVICE_NAME], row, row + 1) < 0 ||
        strcol_copy_rows(&o[SS_STATUS_CODE], &s[S_STATUS_CODE], row, row + 1) < 0 ||
        strcol_copy_rows(&o[SS_STATUS_MESSAGE], &s[S_STATUS_MESSAGE], row, row + 1) < 0)
        return -1;
    for (size_t i = 0; i < pl->n; i++) { /* pl is deduped: pairs_to_row ran */
        const Pair *pr = &pl->items[i];
        if (is_side_key(pr->k, pr->klen) &&
            (strcol_add(&m[SA_SPAN].k, pr->k, pr->klen) < 0 ||
             strcol_add(&m[SA_SPAN].v, pair_value(pl, pr), pr->vlen) < 0))
            return -1;
    }
    if (mapcol_close_row(&m[SA_SPAN]) < 0 ||
        strcol_append(&m[SA_RESOURCE].k, &d->res_keys) < 0 ||
        strcol_append(&m[SA_RESOURCE].v, &d->res_values) < 0 ||
        mapcol_close_row(&m[SA_RESOURCE]) < 0)
        return -1;
    if (events > first_event &&
        (buf_put(&d->side_num[SN_EVENT_TIME], d->num[N_EVENT_TIME].p + 8 * first_event,
                 8 * (events - first_event)) < 0 ||
         strcol_copy_rows(&o[SS_EVENT_NAME], &s[S_EVENT_NAME], first_event, events) < 0 ||
         mapcol_copy_rows(&m[SA_EVENT], &d->map[A_EVENT], first_event, events) < 0))
        return -1;
    return put_offset(&d->side_num[SN_EVENT_OFFSETS], strcol_rows(&o[SS_EVENT_NAME]));
}

static int
dec_span(Dec *d, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    const uint8_t *empty = (const uint8_t *)"";
    Bytes trace = {empty, 0}, span = {empty, 0}, parent = {empty, 0};
    Bytes state = {empty, 0}, name = {empty, 0}, status_msg = {empty, 0};
    uint64_t start = 0, stop = 0;
    uint32_t flags = 0;
    int32_t kind = 0, code = 0;
    SpanMark mark;
    span_mark(d, &mark);
    PairList *pl = &d->span_pairs;
    pairs_reset(pl);
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        switch (f.num) {
        case 1:
        case 2:
        case 4:
            if (f.wt == WT_LEN) {
                Bytes *b = f.num == 1 ? &trace : f.num == 2 ? &span : &parent;
                b->p = f.p;
                b->n = f.n;
            }
            break;
        case 3:
        case 5:
            if (f.wt == WT_LEN) {
                if (check_utf8(&f) < 0)
                    return -1;
                Bytes *b = f.num == 3 ? &state : &name;
                b->p = f.p;
                b->n = f.n;
            }
            break;
        case 6:
            if (f.wt == WT_VARINT)
                kind = (int32_t)(uint32_t)f.u;
            break;
        case 7:
        case 8:
            if (f.wt == WT_I64)
                *(f.num == 7 ? &start : &stop) = f.u;
            break;
        case 9:
            if (f.wt == WT_LEN && dec_attribute(d, pl, &f, depth + 1) < 0)
                return -1;
            break;
        case 11:
            if (f.wt == WT_LEN && dec_event(d, f.p, f.p + f.n, depth + 1) < 0)
                return -1;
            break;
        case 13:
            if (f.wt == WT_LEN && dec_link(d, f.p, f.p + f.n, depth + 1) < 0)
                return -1;
            break;
        case 15:
            if (f.wt == WT_LEN &&
                dec_status(f.p, f.p + f.n, &status_msg.p, &status_msg.n, &code, depth + 1) < 0)
                return -1;
            break;
        case 16:
            if (f.wt == WT_I32)
                flags = (uint32_t)f.u;
            break;
        default:
            break;
        }
    }

    int reason = -1;
    if (trace.n != 16 || all_zero(trace.p, trace.n))
        reason = R_TRACE_ID;
    else if (span.n != 8 || all_zero(span.p, span.n))
        reason = R_SPAN_ID;
    else if (parent.n != 0 && parent.n != 8)
        reason = R_PARENT_SPAN_ID;
    else if (start > MAX_TIMESTAMP_NS || stop > MAX_TIMESTAMP_NS)
        reason = R_TIMESTAMP;
    if (reason >= 0) {
        span_restore(d, &mark);
        d->rejected++;
        if (d->first_reason < 0)
            d->first_reason = reason;
        return 0;
    }

    StrCol *s = d->str;
    MapCol *m = d->map;
    int64_t duration = stop > start ? (int64_t)(stop - start) : 0;
    if (buf_put_i64(&d->num[N_TIMESTAMP], (int64_t)start) < 0 ||
        buf_put_i64(&d->num[N_DURATION], duration) < 0 ||
        buf_put(&d->num[N_FLAGS], &flags, sizeof flags) < 0 ||
        strcol_add_hex(&s[S_TRACE_ID], trace.p, trace.n) < 0 ||
        strcol_add_hex(&s[S_SPAN_ID], span.p, span.n) < 0 ||
        add_hex_or_empty(&s[S_PARENT_SPAN_ID], parent.p, parent.n) < 0 ||
        strcol_add(&s[S_TRACE_STATE], (const char *)state.p, state.n) < 0 ||
        strcol_add(&s[S_SPAN_NAME], (const char *)name.p, name.n) < 0 ||
        add_enum(&s[S_SPAN_KIND], kind, SPAN_KINDS, 6) < 0 ||
        add_enum(&s[S_STATUS_CODE], code, STATUS_CODES, 3) < 0 ||
        strcol_add(&s[S_STATUS_MESSAGE], (const char *)status_msg.p, status_msg.n) < 0 ||
        strcol_add(&s[S_SERVICE_NAME], d->service_name.p, d->service_name.len) < 0 ||
        strcol_add(&s[S_SCOPE_NAME], d->scope_name, d->scope_name_len) < 0 ||
        strcol_add(&s[S_SCOPE_VERSION], d->scope_version, d->scope_version_len) < 0)
        return -1;
    if (strcol_append(&m[A_RESOURCE].k, &d->res_keys) < 0 ||
        strcol_append(&m[A_RESOURCE].v, &d->res_values) < 0 ||
        mapcol_close_row(&m[A_RESOURCE]) < 0 ||
        strcol_append(&m[A_SCOPE].k, &d->scope_keys) < 0 ||
        strcol_append(&m[A_SCOPE].v, &d->scope_values) < 0 ||
        mapcol_close_row(&m[A_SCOPE]) < 0)
        return -1;
    if (pairs_to_row(pl, &m[A_SPAN]) < 0)
        return -1;
    int marked = mark_llm_span(d, pl);
    if (marked < 0)
        return -1;
    if (put_offset(&d->num[N_EVENT_OFFSETS], strcol_rows(&s[S_EVENT_NAME])) < 0 ||
        put_offset(&d->num[N_LINK_OFFSETS], strcol_rows(&s[S_LINK_TRACE_ID])) < 0)
        return -1;
    if (marked && d->side_on && side_add(d, pl, mark.event_time / sizeof(int64_t)) < 0)
        return -1;
    return 0;
}

/* A resource's or scope's attributes, rendered once into `keys`/`values` (one row). */
static int
pairs_to_prepared(PairList *pl, StrCol *keys, StrCol *values)
{
    keys->data.len = values->data.len = 0;
    keys->offs.len = values->offs.len = sizeof(int32_t); /* the leading 0 */
    if (pairs_dedupe(pl) < 0)
        return -1;
    for (size_t i = 0; i < pl->n; i++) {
        const Pair *pr = &pl->items[i];
        if (strcol_add(keys, pr->k, pr->klen) < 0 ||
            strcol_add(values, pair_value(pl, pr), pr->vlen) < 0)
            return -1;
    }
    return 0;
}

/* The first passes over the resource and scope levels, shared with the logs and metrics
 * decoders (_wire_scopes.c, included below). */
static int read_resource_x(Dec *d, const uint8_t *p, const uint8_t *end, int depth,
                           Bytes *schema_url);
static int read_scope_x(Dec *d, const uint8_t *p, const uint8_t *end, int depth,
                        Bytes *schema_url, uint32_t *dropped);

static int
dec_scope_spans(Dec *d, const uint8_t *p, const uint8_t *end, int depth)
{
    /* First pass: the scope (which may come after the spans) and everything but the spans.
     * Spans keep neither the scope's schema_url nor its dropped-attributes count. */
    Bytes schema_url;
    uint32_t dropped;
    if (read_scope_x(d, p, end, depth, &schema_url, &dropped) < 0)
        return -1;

    /* Second pass: the spans. */
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == 2 && f.wt == WT_LEN && dec_span(d, f.p, f.p + f.n, depth + 1) < 0)
            return -1;
    }
    return 0;
}

/* Records that the resource just read put rows `before` to `after` (exclusive) in the table. */
static int
put_resource_start(Dec *d, size_t before, size_t after)
{
    if (after == before)
        return 0;
    if (before > INT32_MAX)
        return fail("too many rows");
    return buf_put_i32(&d->resource_starts, (int32_t)before);
}

static int
dec_resource_spans(Dec *d, const uint8_t *p, const uint8_t *end, int depth)
{
    /* First pass: the resource (which may come after the scopes) and everything but them. */
    Bytes schema_url;
    if (read_resource_x(d, p, end, depth, &schema_url) < 0)
        return -1;

    /* Second pass: the scopes and their spans. */
    size_t before = d->num[N_TIMESTAMP].len / 8; /* rows so far (rejected spans are undone) */
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == 2 && f.wt == WT_LEN && dec_scope_spans(d, f.p, f.p + f.n, depth + 1) < 0)
            return -1;
    }
    return put_resource_start(d, before, d->num[N_TIMESTAMP].len / 8);
}

static int
dec_request(Dec *d, const uint8_t *p, const uint8_t *end)
{
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, 0) < 0)
            return -1;
        if (f.num == 1 && f.wt == WT_LEN && dec_resource_spans(d, f.p, f.p + f.n, 1) < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Module                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Sizes the columns up front from the size of the request, so that they seldom grow (each
 * growth copies): a guess of one span per 256 bytes of request, and per span the usual widths.
 * Memory that is never written is never touched, and the slack is trimmed at export. */
static int
dec_reserve(Dec *d, size_t input_len)
{
    size_t rows = input_len / 256 + 1;
    static const size_t str_width[N_STR] = {
        [S_TRACE_ID] = 32, [S_SPAN_ID] = 16, [S_PARENT_SPAN_ID] = 16, [S_SPAN_NAME] = 24,
        [S_SPAN_KIND] = 8, [S_SERVICE_NAME] = 16, [S_SCOPE_NAME] = 40, [S_SCOPE_VERSION] = 8,
        [S_STATUS_CODE] = 8,
    };
    /* entries and bytes of keys and values per row */
    static const size_t map_entries[N_MAP] = {[A_RESOURCE] = 16, [A_SPAN] = 12};
    static const size_t map_bytes[N_MAP] = {[A_RESOURCE] = 256, [A_SPAN] = 160};
    if (buf_reserve(&d->num[N_TIMESTAMP], 8 * rows) < 0 ||
        buf_reserve(&d->num[N_DURATION], 8 * rows) < 0 ||
        buf_reserve(&d->num[N_FLAGS], 4 * rows) < 0 ||
        buf_reserve(&d->num[N_EVENT_OFFSETS], 4 * rows) < 0 ||
        buf_reserve(&d->num[N_LINK_OFFSETS], 4 * rows) < 0)
        return -1;
    for (int i = 0; i < N_STR; i++) {
        if (!str_width[i])
            continue;
        if (buf_reserve(&d->str[i].offs, 4 * rows) < 0 ||
            buf_reserve(&d->str[i].data, str_width[i] * rows) < 0)
            return -1;
    }
    for (int i = 0; i < N_MAP; i++) {
        MapCol *m = &d->map[i];
        if (buf_reserve(&m->offs, 4 * rows) < 0)
            return -1;
        if (!map_entries[i])
            continue;
        if (buf_reserve(&m->k.offs, 4 * map_entries[i] * rows) < 0 ||
            buf_reserve(&m->v.offs, 4 * map_entries[i] * rows) < 0 ||
            buf_reserve(&m->k.data, map_bytes[i] * rows) < 0 ||
            buf_reserve(&m->v.data, map_bytes[i] * rows) < 0)
            return -1;
    }
    return 0;
}

/* The span columns are one run of Bufs (num, then str's two each, then map's five each), so
 * the size hints (hints_presize) walk them as an array. */
#define SPAN_BUFS (N_NUM + 2 * N_STR + 5 * N_MAP)
_Static_assert(offsetof(Dec, map) + sizeof(((Dec *)0)->map) ==
                   offsetof(Dec, num) + SPAN_BUFS * sizeof(Buf),
               "Dec's columns are not one run of Bufs");
_Static_assert(SPAN_BUFS <= MAX_HINTED_BUFS, "raise MAX_HINTED_BUFS");
static size_t span_hints[SPAN_BUFS];
static size_t span_hint_input;

static int
dec_init(Dec *d, size_t input_len)
{
    memset(d, 0, sizeof *d);
    d->first_reason = -1;
    if (!hints_presize(span_hints, &span_hint_input, d->num, SPAN_BUFS, N_TIMESTAMP, input_len) &&
        dec_reserve(d, input_len) < 0)
        return -1;
    if (buf_put_i32(&d->num[N_EVENT_OFFSETS], 0) < 0 ||
        buf_put_i32(&d->num[N_LINK_OFFSETS], 0) < 0)
        return -1;
    for (int i = 0; i < N_STR; i++)
        if (strcol_init(&d->str[i]) < 0)
            return -1;
    for (int i = 0; i < N_MAP; i++)
        if (mapcol_init(&d->map[i]) < 0)
            return -1;
    if (strcol_init(&d->res_keys) < 0 || strcol_init(&d->res_values) < 0 ||
        strcol_init(&d->scope_keys) < 0 || strcol_init(&d->scope_values) < 0)
        return -1;
    return 0;
}

static void
dec_free(Dec *d)
{
    for (int i = 0; i < N_NUM; i++)
        buf_free(&d->num[i]);
    for (int i = 0; i < N_STR; i++)
        strcol_free(&d->str[i]);
    for (int i = 0; i < N_MAP; i++)
        mapcol_free(&d->map[i]);
    pairs_free(&d->res_pairs);
    pairs_free(&d->scope_pairs);
    pairs_free(&d->span_pairs);
    pairs_free(&d->event_pairs);
    pairs_free(&d->link_pairs);
    strcol_free(&d->res_keys);
    strcol_free(&d->res_values);
    strcol_free(&d->scope_keys);
    strcol_free(&d->scope_values);
    buf_free(&d->service_name);
    buf_free(&d->llm_rows);
    buf_free(&d->resource_starts);
    side_free(d);
}

/* ------------------------------------------------------------------------------------------ */
/* Export: the Arrow C data interface                                                         */
/* ------------------------------------------------------------------------------------------ */

/* The columns leave as one Arrow struct array (the record batch) through the C data
 * interface, in a PyCapsule named "arrow_array" as the Arrow PyCapsule interface has it. The
 * buffers are handed over, not copied, and a single import builds the whole batch: assembling
 * it array by array from Python would cost more than decoding. */

#ifndef ARROW_C_DATA_INTERFACE
#define ARROW_C_DATA_INTERFACE
struct ArrowArray {
    int64_t length;
    int64_t null_count;
    int64_t offset;
    int64_t n_buffers;
    int64_t n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};
#endif

/* Each table has a fixed shape. The largest: otel_traces has 44 arrays (43 here plus the root,
 * which lives in the capsule), 43 child links, 105 buffer slots and 61 owned buffers;
 * otel_metrics_exponential_histogram 49 arrays, about 110 slots and 65 owned buffers (three
 * of them validity bitmaps). */
#define MAX_NODES 64
#define MAX_LINKS 64
#define MAX_SLOTS 160
#define MAX_OWNED 96

/* Everything the exported arrays point to, freed when the last of them is released. Arrays
 * are released separately when a consumer moves a child out, hence the count. */
typedef struct {
    int refs;
    int n_nodes, n_links, n_slots, n_owned;
    /* Bytes of the exported buffers as Arrow's import sizes them (what get_total_buffer_size
     * then counts): the Python side reads this instead of walking the batch again. */
    int64_t bytes;
    /* When set (the metrics export), buffers are copied into this one block, owned like the
     * others, and their own memory freed at once (see take). */
    char *arena;
    size_t arena_used, arena_cap;
    struct ArrowArray nodes[MAX_NODES];
    struct ArrowArray *links[MAX_LINKS];
    const void *slots[MAX_SLOTS];
    void *owned[MAX_OWNED];
} Holder;

/* What an empty buffer points to: the interface wants a pointer even for zero bytes. */
static const int64_t EMPTY_BUFFER[1] = {0};

static void
holder_unref(Holder *h)
{
    if (__atomic_sub_fetch(&h->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        for (int i = 0; i < h->n_owned; i++)
            free(h->owned[i]);
        free(h);
    }
}

/* Called by the consumer, on any thread, with or without the GIL: no Python API here. */
static void
release_array(struct ArrowArray *a)
{
    for (int64_t i = 0; i < a->n_children; i++) {
        struct ArrowArray *child = a->children[i];
        if (child->release != NULL)
            child->release(child);
    }
    Holder *h = a->private_data;
    a->release = NULL;
    holder_unref(h);
}

static struct ArrowArray *
new_array(Holder *h, struct ArrowArray *a, size_t length, int n_buffers, int n_children)
{
    /* The shape is fixed, so this holds whenever it held once (every test builds one). */
    if (h->n_nodes >= MAX_NODES || h->n_slots + n_buffers > MAX_SLOTS ||
        h->n_links + n_children > MAX_LINKS || h->n_owned + n_buffers > MAX_OWNED)
        Py_FatalError("opstrata.otlp._wire: Arrow export tree larger than its holder");
    if (a == NULL)
        a = &h->nodes[h->n_nodes++];
    a->length = (int64_t)length;
    a->null_count = 0;
    a->offset = 0;
    a->n_buffers = n_buffers;
    a->n_children = n_children;
    a->buffers = &h->slots[h->n_slots];
    h->n_slots += n_buffers;
    a->buffers[0] = NULL; /* no validity bitmap: nothing is null */
    a->children = n_children ? &h->links[h->n_links] : NULL;
    h->n_links += n_children;
    a->dictionary = NULL;
    a->release = release_array;
    a->private_data = h;
    h->refs++;
    return a;
}

/* Moves a buffer's memory into the holder; slack past a few KiB is given back first. */
static const void *
take(Holder *h, Buf *b)
{
    if (b->p == NULL || b->len == 0)
        return EMPTY_BUFFER;
    size_t room = (b->len + 63) & ~(size_t)63; /* each buffer 64-byte aligned in the block */
    if (h->arena != NULL && room <= h->arena_cap - h->arena_used) {
        char *p = h->arena + h->arena_used;
        memcpy(p, b->p, b->len);
        h->arena_used += room;
        h->bytes += (int64_t)b->len;
        buf_free(b);
        return p;
    }
    if (b->cap - b->len > 4096) {
        char *p = realloc(b->p, b->len);
        if (p != NULL)
            b->p = p;
    }
    h->owned[h->n_owned++] = b->p;
    h->bytes += (int64_t)b->len; /* each column's length is its Arrow length's exact size */
    b->p = NULL;
    b->len = b->cap = 0;
    return h->owned[h->n_owned - 1];
}

static struct ArrowArray *
fixed_array(Holder *h, Buf *b, size_t length)
{
    struct ArrowArray *a = new_array(h, NULL, length, 2, 0);
    a->buffers[1] = take(h, b);
    return a;
}

static struct ArrowArray *
string_array(Holder *h, StrCol *c)
{
    struct ArrowArray *a = new_array(h, NULL, strcol_rows(c), 3, 0);
    a->buffers[1] = take(h, &c->offs);
    a->buffers[2] = take(h, &c->data);
    return a;
}

static struct ArrowArray *
map_array(Holder *h, MapCol *m, size_t rows)
{
    struct ArrowArray *a = new_array(h, NULL, rows, 2, 1);
    a->buffers[1] = take(h, &m->offs);
    struct ArrowArray *entries = new_array(h, NULL, strcol_rows(&m->k), 1, 2);
    entries->children[0] = string_array(h, &m->k);
    entries->children[1] = string_array(h, &m->v);
    a->children[0] = entries;
    return a;
}

/* A list column whose items are a struct of the given arrays. */
static struct ArrowArray *
list_of_structs(Holder *h, Buf *offsets, size_t rows, size_t items, struct ArrowArray **fields,
                int n_fields)
{
    struct ArrowArray *a = new_array(h, NULL, rows, 2, 1);
    a->buffers[1] = take(h, offsets);
    struct ArrowArray *item = new_array(h, NULL, items, 1, n_fields);
    for (int i = 0; i < n_fields; i++)
        item->children[i] = fields[i];
    a->children[0] = item;
    return a;
}

static void
capsule_release(PyObject *capsule)
{
    struct ArrowArray *a = PyCapsule_GetPointer(capsule, "arrow_array");
    if (a == NULL) {
        PyErr_WriteUnraisable(capsule);
        return;
    }
    if (a->release != NULL)
        a->release(a);
    free(a);
}

/* Wraps an exported root array in its "arrow_array" capsule (the root freed if that fails).
 * Holds the GIL; the export before it runs without. */
static PyObject *
root_capsule(struct ArrowArray *root)
{
    PyObject *capsule = PyCapsule_New(root, "arrow_array", capsule_release);
    if (capsule == NULL) {
        release_array(root);
        free(root);
    }
    return capsule;
}

/* A batch's root array and the holder of its buffers (*holder); NULL for both when out of
 * memory (with the exception set and the GIL taken, as no_memory does). */
static struct ArrowArray *
new_root(Holder **holder)
{
    struct ArrowArray *root = malloc(sizeof *root);
    Holder *h = calloc(1, sizeof *h);
    if (root == NULL || h == NULL) {
        free(root);
        free(h);
        no_memory();
        return NULL;
    }
    *holder = h;
    return root;
}

/* The accepted spans as an otel_traces record batch (a struct array, columns in the order of
 * opstrata.schema.TRACES), for root_capsule. Plain C, run without the GIL; NULL when out of
 * memory (with the exception set and the GIL taken, as no_memory does). */
static struct ArrowArray *
export_spans(Dec *d)
{
    size_t n = d->num[N_TIMESTAMP].len / sizeof(int64_t);
    size_t events = strcol_rows(&d->str[S_EVENT_NAME]);
    size_t links = strcol_rows(&d->str[S_LINK_TRACE_ID]);
    Holder *h;
    struct ArrowArray *root = new_root(&h);
    if (root == NULL)
        return NULL;
    StrCol *s = d->str;
    MapCol *m = d->map;
    struct ArrowArray *event_fields[] = {
        fixed_array(h, &d->num[N_EVENT_TIME], events),
        string_array(h, &s[S_EVENT_NAME]),
        map_array(h, &m[A_EVENT], events),
    };
    struct ArrowArray *link_fields[] = {
        string_array(h, &s[S_LINK_TRACE_ID]),
        string_array(h, &s[S_LINK_SPAN_ID]),
        string_array(h, &s[S_LINK_TRACE_STATE]),
        map_array(h, &m[A_LINK], links),
    };
    struct ArrowArray *columns[] = {
        fixed_array(h, &d->num[N_TIMESTAMP], n),
        string_array(h, &s[S_TRACE_ID]),
        string_array(h, &s[S_SPAN_ID]),
        string_array(h, &s[S_PARENT_SPAN_ID]),
        string_array(h, &s[S_TRACE_STATE]),
        string_array(h, &s[S_SPAN_NAME]),
        string_array(h, &s[S_SPAN_KIND]),
        string_array(h, &s[S_SERVICE_NAME]),
        map_array(h, &m[A_RESOURCE], n),
        string_array(h, &s[S_SCOPE_NAME]),
        string_array(h, &s[S_SCOPE_VERSION]),
        map_array(h, &m[A_SPAN], n),
        fixed_array(h, &d->num[N_DURATION], n),
        string_array(h, &s[S_STATUS_CODE]),
        string_array(h, &s[S_STATUS_MESSAGE]),
        list_of_structs(h, &d->num[N_EVENT_OFFSETS], n, events, event_fields, 3),
        list_of_structs(h, &d->num[N_LINK_OFFSETS], n, links, link_fields, 4),
        map_array(h, &m[A_SCOPE], n),
        fixed_array(h, &d->num[N_FLAGS], n),
    };
    int n_columns = (int)(sizeof columns / sizeof columns[0]);
    new_array(h, root, n, 1, n_columns);
    for (int i = 0; i < n_columns; i++)
        root->children[i] = columns[i];
    return root;
}

/* The side batch (see side_add) as a struct array in the order of decode_traces.LLM_SPANS;
 * NULL when out of memory, as export_spans. */
static struct ArrowArray *
export_side(Dec *d)
{
    size_t n = side_rows(d);
    size_t events = strcol_rows(&d->side_str[SS_EVENT_NAME]);
    Holder *h;
    struct ArrowArray *root = new_root(&h);
    if (root == NULL)
        return NULL;
    StrCol *s = d->side_str;
    MapCol *m = d->side_map;
    Buf *b = d->side_num;
    struct ArrowArray *event_fields[] = {
        fixed_array(h, &b[SN_EVENT_TIME], events),
        string_array(h, &s[SS_EVENT_NAME]),
        map_array(h, &m[SA_EVENT], events),
    };
    struct ArrowArray *columns[] = {
        fixed_array(h, &b[SN_TIMESTAMP], n),
        string_array(h, &s[SS_TRACE_ID]),
        string_array(h, &s[SS_SPAN_ID]),
        string_array(h, &s[SS_SERVICE_NAME]),
        map_array(h, &m[SA_SPAN], n),
        fixed_array(h, &b[SN_DURATION], n),
        string_array(h, &s[SS_STATUS_CODE]),
        string_array(h, &s[SS_STATUS_MESSAGE]),
        list_of_structs(h, &b[SN_EVENT_OFFSETS], n, events, event_fields, 3),
        map_array(h, &m[SA_RESOURCE], n),
    };
    int n_columns = (int)(sizeof columns / sizeof columns[0]);
    new_array(h, root, n, 1, n_columns);
    for (int i = 0; i < n_columns; i++)
        root->children[i] = columns[i];
    return root;
}

/* A table's event time as opstrata.consumers._median_time works it out from the timestamp
 * column: the value at index n / 2 of the sorted values (of an even count, the upper middle
 * one), so that one item from a skewed clock cannot move time far ahead. Worked out here, from
 * the column before it is exported, as the fan-out would (it cost ~10 µs per table of the event
 * loop, through numpy: docs/performance.md, "Ingest, ninth round"). Quickselect with a median
 * of three pivot on a copy; past a budget of rounds (a hostile order of timestamps) the range
 * left is sorted, so that no request costs more than n log n. -1 when it cannot (no memory):
 * the fan-out works it out then. */
static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int64_t
median_time(const Buf *times)
{
    ptrdiff_t n = (ptrdiff_t)(times->len / sizeof(int64_t));
    if (n == 0)
        return 0;
    int64_t stack[256];
    int64_t *v = n <= (ptrdiff_t)(sizeof stack / sizeof stack[0]) ? stack : malloc(n * sizeof *v);
    if (v == NULL)
        return -1;
    memcpy(v, times->p, (size_t)n * sizeof *v);
    ptrdiff_t k = n / 2, lo = 0, hi = n - 1;
    for (int budget = 64; lo < hi; budget--) {
        if (budget == 0) {
            qsort(v + lo, (size_t)(hi - lo + 1), sizeof *v, cmp_i64);
            break;
        }
        /* the median of the first, middle and last values as the pivot, by value */
        ptrdiff_t mid = lo + (hi - lo) / 2;
        int64_t a = v[lo], b = v[mid], c = v[hi];
        int64_t pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        /* Hoare's partition; the pivot's value is in the range, so the scans stop in it */
        ptrdiff_t i = lo, j = hi;
        for (;;) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i >= j)
                break;
            int64_t t = v[i];
            v[i] = v[j];
            v[j] = t;
            i++;
            j--;
        }
        if (i == j) { /* v[i] is the pivot, with no greater value left of it nor smaller right */
            i++;
            j--;
        }
        /* [lo, j] <= pivot <= [i, hi], and the values between (j, i) equal the pivot */
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break; /* v[k] is the pivot */
    }
    int64_t median = v[k];
    if (v != stack)
        free(v);
    return median;
}

/* The buffer bytes of an exported batch (see Holder.bytes). */
static Py_ssize_t
capsule_bytes(PyObject *capsule)
{
    struct ArrowArray *root = PyCapsule_GetPointer(capsule, "arrow_array");
    return root == NULL ? 0 : (Py_ssize_t)((Holder *)root->private_data)->bytes;
}

/* The result tuple, from the exported batch (NULL: no span accepted) and its event time. */
static void side_block_free(PyObject *capsule);

static PyObject *
build_result(Dec *d, struct ArrowArray *root, SideBlock *side, long long event_time)
{
    PyObject *side_batch;
    Py_ssize_t side_bytes = 0;
    if (side == NULL)
        side_batch = Py_NewRef(Py_None);
    else if ((side_batch = PyCapsule_New(side, SIDE_CAPSULE, side_block_free)) == NULL) {
        free(side);
        if (root != NULL) {
            release_array(root);
            free(root);
        }
        return NULL;
    }
    else
        side_bytes = (Py_ssize_t)side->bytes;
    PyObject *batch;
    void *address = NULL;
    Py_ssize_t nbytes = 0;
    if (root == NULL)
        batch = Py_NewRef(Py_None);
    else if ((batch = root_capsule(root)) == NULL) {
        Py_DECREF(side_batch);
        return NULL;
    }
    else {
        address = root;
        nbytes = capsule_bytes(batch);
    }
    PyObject *llm_rows = d->llm_rows.len
                             ? PyBytes_FromStringAndSize(d->llm_rows.p, (Py_ssize_t)d->llm_rows.len)
                             : Py_NewRef(Py_None);
    if (llm_rows == NULL) {
        Py_DECREF(batch);
        Py_DECREF(side_batch);
        return NULL;
    }
    return Py_BuildValue("(nnnnNNNnLy#Nn)", d->rejected, (Py_ssize_t)d->first_reason,
                         d->dropped_attributes, d->truncated_values, batch,
                         PyLong_FromVoidPtr(address), llm_rows, nbytes, event_time,
                         d->resource_starts.p ? d->resource_starts.p : "",
                         (Py_ssize_t)d->resource_starts.len, side_batch, side_bytes);
}

/* ---- Handing side batches over, and joining them ----
 *
 * A request's side columns leave as one malloc'd block (SideBlock: every buffer copied in, a
 * few KB), in a capsule of its own, not as an exported Arrow batch: the plugin keeps them for
 * seconds, and ~30 buffers a request (plus the export's holder), allocated on the event loop's
 * thread and freed seconds later on the plugin's, made the event loop's malloc ~10 % of its
 * time (consolidating and unlinking fragments; perf, docs/performance.md "LLMOps, eleventh
 * round"); an import a request would cost ~13 µs more. The columns themselves are the decoding
 * thread's, kept for its next request (side_scratch). join_llm_spans then copies a look's
 * blocks into one batch, exported and imported once. */

static void
side_block_free(PyObject *capsule)
{
    free(PyCapsule_GetPointer(capsule, SIDE_CAPSULE));
}

/* d's side columns copied into one block; NULL when out of memory (GIL taken, error set). */
static SideBlock *
side_pack(Dec *d)
{
    const Buf *run = side_run(d);
    size_t size = sizeof(SideBlock);
    for (int i = 0; i < SIDE_BUFS; i++)
        size += (run[i].len + 7) & ~(size_t)7;
    SideBlock *b = malloc(size);
    if (b == NULL) {
        no_memory();
        return NULL;
    }
    b->rows = side_rows(d);
    b->bytes = size;
    size_t at = 0;
    for (int i = 0; i < SIDE_BUFS; i++) {
        b->off[i] = at;
        b->len[i] = run[i].len;
        if (run[i].len)
            memcpy(b->data + at, run[i].p, run[i].len);
        at += (run[i].len + 7) & ~(size_t)7;
    }
    return b;
}

/* A block's buffers as side columns to read from (not owned). */
static void
side_view(const SideBlock *b, SideCols *v)
{
    Buf *run = (Buf *)v;
    for (int i = 0; i < SIDE_BUFS; i++) {
        run[i].p = (char *)b->data + b->off[i];
        run[i].len = run[i].cap = b->len[i];
    }
}

/* Appends one block's rows to d's side columns. */
static int
side_append(Dec *d, const SideBlock *b)
{
    SideCols v;
    side_view(b, &v);
    size_t n = b->rows, events = strcol_rows(&v.str[SS_EVENT_NAME]);
    size_t base = strcol_rows(&d->side_str[SS_EVENT_NAME]);
    Buf *num = d->side_num;
    if (buf_put(&num[SN_TIMESTAMP], v.num[SN_TIMESTAMP].p, 8 * n) < 0 ||
        buf_put(&num[SN_DURATION], v.num[SN_DURATION].p, 8 * n) < 0 ||
        buf_put(&num[SN_EVENT_TIME], v.num[SN_EVENT_TIME].p, 8 * events) < 0)
        return -1;
    for (int i = 0; i < SS_NUM; i++)
        if (strcol_copy_rows(&d->side_str[i], &v.str[i], 0, i == SS_EVENT_NAME ? events : n) < 0)
            return -1;
    for (int i = 0; i < SA_NUM; i++)
        if (mapcol_copy_rows(&d->side_map[i], &v.map[i], 0, i == SA_EVENT ? events : n) < 0)
            return -1;
    const int32_t *lo = (const int32_t *)v.num[SN_EVENT_OFFSETS].p;
    for (size_t i = 1; i <= n; i++)
        if (put_offset(&num[SN_EVENT_OFFSETS], base + (size_t)lo[i]) < 0)
            return -1;
    return 0;
}

PyDoc_STRVAR(join_llm_spans_doc,
"join_llm_spans(sides) -> (side, side_address, side_nbytes)\n"
"--\n\n"
"The side batches of decode_traces (their capsules, in order) joined into one, returned as an\n"
"Arrow C data interface capsule \"arrow_array\" of opstrata.otlp.decode_traces.LLM_SPANS, its\n"
"ArrowArray's address and its buffer bytes; the capsules are left as they were.");

static PyObject *
wire_join_llm_spans(PyObject *self, PyObject *sides)
{
    (void)self;
    /* A tuple of its own (PySequence_Fast hands a list back as itself): the blocks are read
     * without the GIL, and another thread emptying the caller's list would free them. */
    PyObject *seq = PySequence_Tuple(sides);
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(seq);
    const SideBlock **blocks = malloc((size_t)(count ? count : 1) * sizeof *blocks);
    if (blocks == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    size_t need[SIDE_BUFS] = {0};
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *capsule = PyTuple_GET_ITEM(seq, i);
        blocks[i] = PyCapsule_IsValid(capsule, SIDE_CAPSULE)
                        ? PyCapsule_GetPointer(capsule, SIDE_CAPSULE)
                        : NULL;
        if (blocks[i] == NULL) {
            free(blocks);
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "join_llm_spans: not a side batch of decode_traces");
            return NULL;
        }
        for (int j = 0; j < SIDE_BUFS; j++)
            need[j] += blocks[i]->len[j];
    }
    Dec d;
    memset(&d, 0, sizeof d);
    struct ArrowArray *side = NULL;
    int ok = side_init(&d) == 0;
    gil_release(); /* the capsules are held by `seq`, and nothing changes their blocks */
    /* Each column reserved once for the whole group: grown by doubling, a look's few MB were
     * copied a dozen times (and their fresh pages touched each time). */
    for (int j = 0; ok && j < SIDE_BUFS; j++)
        ok = buf_reserve(&side_run(&d)[j], need[j]) == 0;
    for (Py_ssize_t i = 0; ok && i < count; i++)
        ok = side_append(&d, blocks[i]) == 0;
    if (ok && (side = export_side(&d)) == NULL)
        ok = 0;
    gil_take();
    free(blocks);
    Py_DECREF(seq);
    side_free(&d);
    if (!ok)
        return NULL;
    PyObject *capsule = root_capsule(side);
    if (capsule == NULL)
        return NULL;
    return Py_BuildValue("(NNn)", capsule, PyLong_FromVoidPtr(side), capsule_bytes(capsule));
}

/* Logs and metrics, in files of their own (one translation unit: the helpers stay static). */
#include "_wire_scopes.c"
#include "_wire_logs.c"
#include "_wire_metrics.c"

PyDoc_STRVAR(decode_traces_doc,
"decode_traces(data, max_attributes, max_value_chars, render_complex, llm_spans=False)\n"
"--\n\n"
"Decode a serialized ExportTraceServiceRequest into otel_traces columns.\n\n"
"Returns (rejected, first_reason, dropped_attributes, truncated_values, batch, address,\n"
"llm_rows, nbytes, event_time, resource_starts, side, side_nbytes):\n"
"first_reason is the index of the first rejected span's reason (-1 if none); batch is\n"
"None when no span was accepted, else a PyCapsule \"arrow_array\" holding an Arrow C data\n"
"interface struct array with the columns of opstrata.schema.TRACES, in its order, and\n"
"address is that ArrowArray's address (for pyarrow's RecordBatch._import_from_c), or 0.\n"
"llm_rows: the rows of spans with a gen_ai./llm./openinference./traceloop. attribute key,\n"
"as native int32 bytes, or None. nbytes: the batch's buffer bytes as pyarrow's\n"
"get_total_buffer_size counts them (0 without a batch). event_time: the median timestamp\n"
"(the value at index rows // 2 of the sorted column; 0 without a batch, -1 if not worked out).\n"
"render_complex(serialized KeyValue) -> (rendered value, values cut) renders array, map\n"
"and strindex values. With llm_spans true, side is the marked spans' columns of\n"
"opstrata.otlp.decode_traces.LLM_SPANS in a capsule for join_llm_spans, and side_nbytes its\n"
"size (else, or without a marked span, None and 0).\n"
"Raises DecodeError when the bytes are not a valid request.");

static PyObject *
wire_decode_traces(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t max_attributes, max_value_chars;
    PyObject *render;
    int llm_spans = 0;
    if (!PyArg_ParseTuple(args, "y*nnO|p:decode_traces", &view, &max_attributes,
                          &max_value_chars, &render, &llm_spans))
        return NULL;
    if (max_attributes < 0 || max_value_chars < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "limits must not be negative");
        return NULL;
    }
    if (!PyCallable_Check(render)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "render_complex must be callable");
        return NULL;
    }
    Dec d;
    PyObject *result = NULL;
    int parsed = -1;
    struct ArrowArray *root = NULL;
    SideBlock *side = NULL;
    long long event_time = 0;
    gil_release_for(&view);
    if (dec_init(&d, (size_t)view.len) == 0) {
        d.side_on = llm_spans;
        d.input_len = (size_t)view.len;
        d.max_attributes = (size_t)max_attributes;
        d.max_value_chars = (size_t)max_value_chars;
        d.render_complex = render;
        const uint8_t *p = view.buf;
        parsed = dec_request(&d, p, p + view.len);
        if (parsed == 0) {
            hints_learn(span_hints, &span_hint_input, d.num, SPAN_BUFS, N_TIMESTAMP,
                        (size_t)view.len);
            hints_learn(side_hints, &side_hint_input, d.side_num, SIDE_BUFS, SN_TIMESTAMP,
                        (size_t)view.len); /* learns only from a request with a side batch */
            /* The export is plain C too: only its capsule and tuple need the GIL. */
            event_time = median_time(&d.num[N_TIMESTAMP]); /* before the export moves it */
            if (d.num[N_TIMESTAMP].len != 0 && (root = export_spans(&d)) == NULL)
                parsed = -1;
            else if (side_rows(&d) != 0 && (side = side_pack(&d)) == NULL) {
                parsed = -1;
                if (root != NULL) {
                    release_array(root);
                    free(root);
                }
            }
        }
    }
    if (d.side_ready)
        side_keep_scratch(&d); /* for this thread's next request */
    gil_take(); /* error paths took it back already, with their exception */
    if (parsed == 0)
        result = build_result(&d, root, side, event_time);
    dec_free(&d);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef wire_methods[] = {
    {"decode_traces", wire_decode_traces, METH_VARARGS, decode_traces_doc},
    {"join_llm_spans", wire_join_llm_spans, METH_O, join_llm_spans_doc},
    {"decode_logs", wire_decode_logs, METH_VARARGS, decode_logs_doc},
    {"decode_metrics", wire_decode_metrics, METH_VARARGS, decode_metrics_doc},
    {"concat_tables", wire_concat_tables, METH_VARARGS, concat_tables_doc},
    {"release_tables", wire_release_tables, METH_VARARGS, release_tables_doc},
    {NULL, NULL, 0, NULL},
};

static int
wire_exec(PyObject *module)
{
    /* One exception class for the process, however often the module is loaded. */
    if (DecodeError == NULL) {
        DecodeError = PyErr_NewExceptionWithDoc(
            "opstrata.otlp._wire.DecodeError",
            "The bytes are not a valid protobuf ExportTraceServiceRequest.", PyExc_ValueError,
            NULL);
        if (DecodeError == NULL)
            return -1;
    }
    if (PyModule_AddObjectRef(module, "DecodeError", DecodeError) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "MAX_DEPTH", MAX_DEPTH);
}

static PyModuleDef_Slot wire_slots[] = {
    {Py_mod_exec, wire_exec},
    {0, NULL},
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "opstrata.otlp._wire",
    .m_doc = "OTLP wire-format decoding into Arrow column buffers.",
    .m_size = 0,
    .m_methods = wire_methods,
    .m_slots = wire_slots,
};

PyMODINIT_FUNC
PyInit__wire(void)
{
    return PyModuleDef_Init(&wire_module);
}
