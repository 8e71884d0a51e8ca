/*
 * opstrata.plugins.llmops._textscan: textscan.scan in one pass over a string column's bytes.
 *
 * The numpy scan (plugins/llmops/textscan.py, kept as the reference and for what this does not
 * take) makes a dozen passes over the bytes and temporaries of their size. This one reads 16
 * bytes at a time (SSE2; a byte at a time elsewhere) and stops only at anchor bytes: "@", digits,
 * and one byte every key prefix has at a fixed place ("-", "_", "A", "b"/"B"), rarer in text
 * than the prefixes' first letters, so that most blocks of a message have none (0.35 ms for a
 * look's 1.06 MB of messages, from 1.5 a byte at a time). The answers are the same, row for row
 * (tests/test_llmops_hint.py compares both):
 *   - at: texts with an "@";
 *   - keys: texts where a key prefix of privacy's API-key pattern starts ("sk-", "xox?-",
 *     "hf_", "gh?_", "AKIA", "AIza", "bearer" in any ASCII case); a prefix is looked for across
 *     the end of its text, up to the end of the column's bytes, as numpy's search of the whole
 *     block does;
 *   - digits: texts with 7 digits, each at most 3 bytes after the one before (within a text).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef struct {
    int64_t *p;
    size_t n, cap;
} Rows;

static int
rows_add(Rows *r, int64_t row)
{
    if (r->n && r->p[r->n - 1] == row)
        return 0;
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 256;
        int64_t *p = realloc(r->p, cap * sizeof *p);
        if (p == NULL)
            return -1;
        r->p = p;
        r->cap = cap;
    }
    r->p[r->n++] = row;
    return 0;
}

static inline int
lower(uint8_t c)
{
    return c | 0x20;
}

/* Whether a key prefix starts at d[i] (the column's bytes end at `end`). */
static inline int
key_at(const uint8_t *d, size_t i, size_t end)
{
    size_t left = end - i;
    switch (d[i]) {
    case 's':
        return left >= 3 && d[i + 1] == 'k' && d[i + 2] == '-';
    case 'x':
        return left >= 5 && d[i + 1] == 'o' && d[i + 2] == 'x' && d[i + 4] == '-';
    case 'h':
        return left >= 3 && d[i + 1] == 'f' && d[i + 2] == '_';
    case 'g':
        return left >= 4 && d[i + 1] == 'h' && d[i + 3] == '_';
    case 'A':
        return left >= 4 && d[i + 1] == 'K' && d[i + 2] == 'I' && d[i + 3] == 'A'
                   ? 1
                   : left >= 4 && d[i + 1] == 'I' && d[i + 2] == 'z' && d[i + 3] == 'a';
    case 'b':
    case 'B':
        return left >= 6 && lower(d[i + 1]) == 'e' && lower(d[i + 2]) == 'a' &&
               lower(d[i + 3]) == 'r' && lower(d[i + 4]) == 'e' && lower(d[i + 5]) == 'r';
    default:
        return 0;
    }
}


static PyObject *
as_bytes(const Rows *r)
{
    return PyBytes_FromStringAndSize((const char *)r->p, (Py_ssize_t)(r->n * sizeof(int64_t)));
}

/* What a text holds, and the digit run being counted. */
typedef struct {
    int at, key, digits;
    size_t run, last; /* digits in the current run, and where the last one was */
} Row;

/* Anchor bytes: "@", digits, and a byte each key prefix has at a fixed place ("-" of sk- and
 * xox?-, "_" of hf_ and gh?_, the "A" of AKIA/AIza, the "b" or "B" of bearer). They are rarer
 * in text than the prefixes' first bytes (s, h, g, x), so most 16-byte blocks have none. */
static uint8_t anchor_byte[256];

/* The anchor at d[p] of the text [b, e) (p may lie up to 3 bytes past e: a key prefix that
 * starts in the text may end after it; such anchors count for keys only). Every key start s
 * found is checked with key_at, so a candidate is exact whichever anchor proposed it. */
static inline void
anchor(const uint8_t *d, size_t p, size_t b, size_t e, size_t end, Row *row)
{
    uint8_t c = d[p];
    if (c == '@') {
        row->at |= p < e;
        return;
    }
    if (c >= '0' && c <= '9') {
        if (p >= e)
            return;
        row->run = (row->run && p - row->last <= 4) ? row->run + 1 : 1;
        row->last = p;
        if (row->run >= 7)
            row->digits = 1;
        return;
    }
    if (row->key)
        return;
    size_t back[2] = {0, 0}; /* how far before the anchor a prefix with it starts */
    int n = 0;
    if (c == '-') {
        back[0] = 2; /* sk- */
        back[1] = 4; /* xox?- */
        n = 2;
    }
    else if (c == '_') {
        back[0] = 2; /* hf_ */
        back[1] = 3; /* gh?_ */
        n = 2;
    }
    else
        n = 1; /* AKIA, AIza, bearer: the anchor is the first byte */
    for (int k = 0; k < n; k++) {
        if (p < b + back[k])
            continue;
        size_t start = p - back[k];
        if (start < e && key_at(d, start, end)) {
            row->key = 1;
            return;
        }
    }
}

/* The flags of the text [b, e) of a column whose bytes end at `end` (`size`: the buffer's
 * length, which 16-byte loads must not pass). */
static void
scan_row(const uint8_t *d, size_t b, size_t e, size_t end, size_t size, Row *row)
{
    size_t lim = e + 4 < end ? e + 4 : end; /* anchors of key prefixes starting before e */
    size_t q = b;
#if defined(__SSE2__)
    const __m128i at = _mm_set1_epi8('@'), dash = _mm_set1_epi8('-'), under = _mm_set1_epi8('_');
    const __m128i upper_a = _mm_set1_epi8('A'), lower_b = _mm_set1_epi8('b');
    const __m128i case_bit = _mm_set1_epi8(0x20), zero = _mm_set1_epi8('0');
    const __m128i nine = _mm_set1_epi8(9);
    for (; q < lim && q + 16 <= size; q += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(d + q));
        __m128i digit = _mm_sub_epi8(v, zero); /* wraps: only "0".."9" become 0..9 */
        __m128i hit = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, at), _mm_cmpeq_epi8(v, dash)),
            _mm_or_si128(_mm_cmpeq_epi8(v, under), _mm_cmpeq_epi8(v, upper_a)));
        hit = _mm_or_si128(hit, _mm_cmpeq_epi8(_mm_or_si128(v, case_bit), lower_b));
        hit = _mm_or_si128(hit, _mm_cmpeq_epi8(_mm_max_epu8(digit, nine), nine));
        unsigned mask = (unsigned)_mm_movemask_epi8(hit);
        if (lim - q < 16)
            mask &= (1u << (lim - q)) - 1;
        while (mask) {
            anchor(d, q + (size_t)__builtin_ctz(mask), b, e, end, row);
            mask &= mask - 1;
        }
    }
#endif
    for (; q < lim; q++)
        if (anchor_byte[d[q]])
            anchor(d, q, b, e, end, row);
}

static int
check_offsets(const Py_buffer *ov, const Py_buffer *dv, size_t *rows)
{
    const int32_t *off = ov->buf;
    size_t n_offsets = (size_t)ov->len / sizeof(int32_t);
    if (n_offsets == 0 || ov->len % sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "offsets must be int32, at least one");
        return -1;
    }
    *rows = n_offsets - 1;
    for (size_t r = 0; r < *rows; r++)
        if (off[r] < 0 || off[r + 1] < off[r]) {
            PyErr_SetString(PyExc_ValueError, "offsets must not decrease");
            return -1;
        }
    if ((size_t)off[*rows] > (size_t)dv->len) {
        PyErr_SetString(PyExc_ValueError, "offsets out of the data's range");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(scan_doc,
"scan(offsets, data) -> (at, keys, digits)\n"
"--\n\n"
"offsets: the int32 offsets of a string array (len + 1, absolute into data); data: its bytes.\n"
"Returns the rows of each flag as native int64 bytes (sorted, distinct).");

static PyObject *
textscan_scan(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer ov, dv;
    if (!PyArg_ParseTuple(args, "y*y*:scan", &ov, &dv))
        return NULL;
    PyObject *result = NULL;
    const int32_t *off = ov.buf;
    const uint8_t *d = dv.buf;
    Rows at = {0}, keys = {0}, digits = {0};
    size_t rows;
    int failed = 0;
    if (check_offsets(&ov, &dv, &rows) < 0)
        goto done;
    size_t end = (size_t)off[rows];
    Py_BEGIN_ALLOW_THREADS
    for (size_t r = 0; r < rows && !failed; r++) {
        size_t i = (size_t)off[r], stop = (size_t)off[r + 1];
        Row row = {0};
        scan_row(d, i, stop, end, (size_t)dv.len, &row);
        int has_at = row.at, has_key = row.key, has_digits = row.digits;
        if ((has_at && rows_add(&at, (int64_t)r) < 0) ||
            (has_key && rows_add(&keys, (int64_t)r) < 0) ||
            (has_digits && rows_add(&digits, (int64_t)r) < 0))
            failed = 1;
    }
    Py_END_ALLOW_THREADS
    if (failed)
        PyErr_NoMemory();
    else {
        PyObject *a = as_bytes(&at), *k = as_bytes(&keys), *g = as_bytes(&digits);
        if (a && k && g)
            result = PyTuple_Pack(3, a, k, g);
        Py_XDECREF(a);
        Py_XDECREF(k);
        Py_XDECREF(g);
    }
done:
    free(at.p);
    free(keys.p);
    free(digits.p);
    PyBuffer_Release(&ov);
    PyBuffer_Release(&dv);
    return result;
}

/* --- E-mail windows: RE2's e-mail replacement run on the bytes around each "@" only ---------- */

/* Bytes of privacy's e-mail pattern: the local part's, and the domain's (letters, digits, "-"
 * and "."). Neither has "@": a match holds one "@", its local part within the run of local
 * bytes right before it and its domain within the run of domain bytes right after it. */
static uint8_t local_byte[256], domain_byte[256];

typedef struct {
    uint8_t *p;
    size_t n, cap;
} Bytes;

static int
bytes_put(Bytes *b, const void *src, size_t len)
{
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + len)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (p == NULL)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    if (len)
        memcpy(b->p + b->n, src, len);
    b->n += len;
    return 0;
}


/* One window: its span, and its bytes after a newline unless it is the first. */
static int
window_put(Bytes *spans, Bytes *windows, const uint8_t *d, int64_t start, int64_t end)
{
    int64_t pair[2] = {start, end};
    return bytes_put(spans, pair, sizeof pair) ||
           (spans->n > sizeof pair && bytes_put(windows, "\n", 1)) ||
           bytes_put(windows, d + start, (size_t)(end - start));
}

PyDoc_STRVAR(email_windows_doc,
"email_windows(offsets, data) -> (spans, windows)\n"
"--\n\n"
"The parts of a string array's texts where privacy's e-mail pattern can match: around each\n"
"\"@\", the run of local-part bytes before it and of domain bytes after it, kept when both\n"
"are there and the domain run has a \".\", and joined with the windows they overlap or touch\n"
"(within a text). spans: native int64 (start, end) byte positions into data, in order;\n"
"windows: their bytes, one after the other, with a newline between two (a byte of neither\n"
"run, so no match crosses it). A replacement run over the windows and spliced back (splice)\n"
"is the replacement run over the whole texts: every match lies within the window of its\n"
"\"@\", and windows that could share a match's bytes are one window.");

static PyObject *
textscan_email_windows(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer ov, dv;
    if (!PyArg_ParseTuple(args, "y*y*:email_windows", &ov, &dv))
        return NULL;
    PyObject *result = NULL;
    Bytes spans = {0}, wdata = {0};
    size_t rows;
    int failed = 0;
    if (check_offsets(&ov, &dv, &rows) < 0)
        goto done;
    const int32_t *off = ov.buf;
    const uint8_t *d = dv.buf;
    Py_BEGIN_ALLOW_THREADS
    for (size_t r = 0; r < rows && !failed; r++) {
        size_t begin = (size_t)off[r], stop = (size_t)off[r + 1];
        int64_t open_start = -1, open_end = -1; /* the window being joined */
        const uint8_t *at = begin < stop ? memchr(d + begin, '@', stop - begin) : NULL;
        while (at != NULL && !failed) {
            size_t i = (size_t)(at - d), lo = i, hi = i + 1;
            int dot = 0;
            while (lo > begin && local_byte[d[lo - 1]])
                lo--;
            while (hi < stop && domain_byte[d[hi]]) {
                dot |= d[hi] == '.';
                hi++;
            }
            if (lo < i && dot) {
                if (open_start >= 0 && (int64_t)lo <= open_end)
                    open_end = (int64_t)hi > open_end ? (int64_t)hi : open_end;
                else {
                    if (open_start >= 0)
                        failed = window_put(&spans, &wdata, d, open_start, open_end);
                    open_start = (int64_t)lo;
                    open_end = (int64_t)hi;
                }
            }
            at = i + 1 < stop ? memchr(d + i + 1, '@', stop - i - 1) : NULL;
        }
        if (open_start >= 0 && !failed)
            failed = window_put(&spans, &wdata, d, open_start, open_end);
    }
    Py_END_ALLOW_THREADS
    if (failed)
        PyErr_NoMemory();
    else
        result = Py_BuildValue("(y#y#)", spans.p ? (char *)spans.p : "", (Py_ssize_t)spans.n,
                               wdata.p ? (char *)wdata.p : "", (Py_ssize_t)wdata.n);
done:
    free(spans.p);
    free(wdata.p);
    PyBuffer_Release(&ov);
    PyBuffer_Release(&dv);
    return result;
}

PyDoc_STRVAR(splice_doc,
"splice(offsets, data, spans, windows) -> (offsets, data)\n"
"--\n\n"
"The texts of a string array (offsets, data) with the byte ranges of spans (native int64\n"
"(start, end) pairs, in order, as email_windows gives them) replaced by the windows, one per\n"
"span, newline between two, as email_windows joins them: the int32 offsets (from 0) and\n"
"bytes of the new string array.");

static PyObject *
textscan_splice(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer ov, dv, sv, wv;
    if (!PyArg_ParseTuple(args, "y*y*y*y*:splice", &ov, &dv, &sv, &wv))
        return NULL;
    PyObject *result = NULL;
    Bytes out_off = {0}, out = {0};
    size_t rows, windows = (size_t)sv.len / (2 * sizeof(int64_t));
    int failed = 0;
    if (check_offsets(&ov, &dv, &rows) < 0)
        goto done;
    const int32_t *off = ov.buf;
    const int64_t *span = sv.buf;
    const uint8_t *d = dv.buf, *wd = wv.buf;
    size_t wlen = (size_t)wv.len, newlines = 0;
    for (size_t i = 0; i < wlen; i++)
        newlines += wd[i] == '\n';
    if (sv.len % (2 * sizeof(int64_t)) || newlines + 1 != (windows ? windows : 1) ||
        (!windows && wlen)) {
        PyErr_SetString(PyExc_ValueError, "one window per span");
        goto done;
    }
    for (size_t w = 0; w < windows; w++) /* in order, within the texts' bytes */
        if (span[2 * w] > span[2 * w + 1] || (w && span[2 * w] < span[2 * w - 1]) ||
            span[2 * w] < off[0] || span[2 * w + 1] > off[rows]) {
            PyErr_SetString(PyExc_ValueError, "spans out of order or of the texts' range");
            goto done;
        }
    Py_BEGIN_ALLOW_THREADS
    size_t w = 0, next = 0; /* the next window, and where its bytes start */
    int32_t zero = 0;
    failed = bytes_put(&out_off, &zero, sizeof zero);
    for (size_t r = 0; r < rows && !failed; r++) {
        size_t at = (size_t)off[r], stop = (size_t)off[r + 1];
        for (; w < windows && (size_t)span[2 * w] < stop && !failed; w++) {
            size_t start = (size_t)span[2 * w], end = (size_t)span[2 * w + 1];
            if (end > stop) { /* a span across two texts: email_windows makes none */
                failed = 2;
                break;
            }
            const uint8_t *nl = memchr(wd + next, '\n', wlen - next);
            size_t wend = nl ? (size_t)(nl - wd) : wlen;
            failed = bytes_put(&out, d + at, start - at) || bytes_put(&out, wd + next, wend - next);
            next = wend + 1;
            at = end;
        }
        if (!failed)
            failed = bytes_put(&out, d + at, stop - at);
        if (!failed && out.n > INT32_MAX)
            failed = 3;
        int32_t o = (int32_t)out.n;
        if (!failed)
            failed = bytes_put(&out_off, &o, sizeof o);
    }
    if (!failed && w != windows)
        failed = 2; /* an empty span at the very end: email_windows makes none */
    Py_END_ALLOW_THREADS
    if (failed == 1)
        PyErr_NoMemory();
    else if (failed == 2)
        PyErr_SetString(PyExc_ValueError, "a span crosses or follows the end of its text");
    else if (failed == 3)
        PyErr_SetString(PyExc_ValueError, "more than 2 GiB of text");
    else
        result = Py_BuildValue("(y#y#)", out_off.p, (Py_ssize_t)out_off.n,
                               out.p ? (char *)out.p : "", (Py_ssize_t)out.n);
done:
    free(out_off.p);
    free(out.p);
    PyBuffer_Release(&ov);
    PyBuffer_Release(&dv);
    PyBuffer_Release(&sv);
    PyBuffer_Release(&wv);
    return result;
}

PyDoc_STRVAR(escaped_doc,
"escaped_brackets(offsets, data) -> rows\n"
"--\n\n"
"Rows whose bytes hold a backslash right before a \"[\" (the backslash's row when the pair\n"
"spans two texts), as native int64 bytes (sorted, distinct).");

static PyObject *
textscan_escaped_brackets(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer ov, dv;
    if (!PyArg_ParseTuple(args, "y*y*:escaped_brackets", &ov, &dv))
        return NULL;
    PyObject *result = NULL;
    Rows found = {0};
    size_t rows;
    int failed = 0;
    if (check_offsets(&ov, &dv, &rows) < 0)
        goto done;
    const int32_t *off = ov.buf;
    const uint8_t *d = dv.buf;
    size_t start = (size_t)off[0], end = (size_t)off[rows];
    Py_BEGIN_ALLOW_THREADS
    size_t r = 0;
    const uint8_t *hit = start + 1 < end ? memchr(d + start + 1, '[', end - start - 1) : NULL;
    while (hit != NULL && !failed) {
        size_t p = (size_t)(hit - d);
        if (d[p - 1] == '\\') {
            while ((size_t)off[r + 1] <= p - 1) /* rows are in order: walk to the backslash's */
                r++;
            failed = rows_add(&found, (int64_t)r) < 0;
        }
        hit = p + 1 < end ? memchr(d + p + 1, '[', end - p - 1) : NULL;
    }
    Py_END_ALLOW_THREADS
    if (failed)
        PyErr_NoMemory();
    else
        result = as_bytes(&found);
done:
    free(found.p);
    PyBuffer_Release(&ov);
    PyBuffer_Release(&dv);
    return result;
}

static PyMethodDef textscan_methods[] = {
    {"scan", textscan_scan, METH_VARARGS, scan_doc},
    {"email_windows", textscan_email_windows, METH_VARARGS, email_windows_doc},
    {"splice", textscan_splice, METH_VARARGS, splice_doc},
    {"escaped_brackets", textscan_escaped_brackets, METH_VARARGS, escaped_doc},
    {NULL, NULL, 0, NULL},
};

static int
textscan_exec(PyObject *module)
{
    (void)module;
    memset(anchor_byte, 0, sizeof anchor_byte);
    for (const char *s = "@0123456789-_AbB"; *s; s++)
        anchor_byte[(uint8_t)*s] = 1;
    memset(local_byte, 0, sizeof local_byte);
    memset(domain_byte, 0, sizeof domain_byte);
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        domain_byte[c] = alnum || c == '-' || c == '.';
        local_byte[c] = domain_byte[c] || c == '_' || c == '%' || c == '+';
    }
    return 0;
}

static PyModuleDef_Slot textscan_slots[] = {
    {Py_mod_exec, textscan_exec},
    {0, NULL},
};

static struct PyModuleDef textscan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "opstrata.plugins.llmops._textscan",
    .m_doc = "The masking pre-filter's byte scan of a string column (textscan.scan).",
    .m_size = 0,
    .m_methods = textscan_methods,
    .m_slots = textscan_slots,
};

PyMODINIT_FUNC
PyInit__textscan(void)
{
    return PyModuleDef_Init(&textscan_module);
}
