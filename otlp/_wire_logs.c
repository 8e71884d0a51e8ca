/*
 * Included by _wire.c: an ExportLogsServiceRequest, as serialized bytes, straight into the
 * otel_logs Arrow columns. Semantics are those of decode_logs() (decode_logs.py) on the request
 * parsed by upb; tests/test_wire_decoder_logs.py compares both.
 *
 *   - A record is rejected when its trace_id is neither empty nor 16 bytes, its span_id neither
 *     empty nor 8 bytes, or a timestamp does not fit int64; it is still parsed (upb would refuse
 *     the request for a broken part of it) but what it cut is not counted.
 *   - The resource's attributes are counted for every ResourceLogs, the scope's only when the
 *     scope stores at least one record (decode_logs renders a scope only then).
 *   - A record without a time is stored at its observed time; severity_number is clamped to
 *     0..255 (the column is uint8); the body is rendered as an attribute value is.
 */

/* Fixed-width columns. */
enum { LN_TIMESTAMP, LN_OBSERVED, LN_FLAGS, LN_SEVERITY, LN_NUM };
/* String columns. */
enum {
    LS_TRACE_ID,
    LS_SPAN_ID,
    LS_SEVERITY_TEXT,
    LS_SERVICE_NAME,
    LS_BODY,
    LS_RESOURCE_SCHEMA_URL,
    LS_SCOPE_SCHEMA_URL,
    LS_SCOPE_NAME,
    LS_SCOPE_VERSION,
    LS_EVENT_NAME,
    LS_NUM
};
/* Map columns. */
enum { LA_RESOURCE, LA_SCOPE, LA_LOG, LA_NUM };
/* The reasons a record is rejected; decode_logs.py holds their texts, in this order. */
enum { LR_TRACE_ID, LR_SPAN_ID, LR_TIMESTAMP };

typedef struct {
    Dec d; /* limits, tallies, the callback, the current resource and scope */
    Buf num[LN_NUM];
    StrCol str[LS_NUM];
    MapCol map[LA_NUM];
    PairList log_pairs, body_pairs;
    Buf body_kv; /* a complex body's occurrences, as a serialized KeyValue for the callback */
    Bytes resource_url, scope_url;
    size_t rows;
} LogDec;

/* The columns are one run of Bufs (num, then str's two each, then map's five each), so the
 * size hints (hints_presize in _wire.c) walk them as an array. */
#define LOG_BUFS (LN_NUM + 2 * LS_NUM + 5 * LA_NUM)
_Static_assert(offsetof(LogDec, map) + sizeof(((LogDec *)0)->map) ==
                   offsetof(LogDec, num) + LOG_BUFS * sizeof(Buf),
               "LogDec's columns are not one run of Bufs");
_Static_assert(LOG_BUFS <= MAX_HINTED_BUFS, "raise MAX_HINTED_BUFS");
static size_t log_hints[LOG_BUFS];
static size_t log_hint_input;

static int
logdec_init(LogDec *L, size_t input_len, Py_ssize_t max_attributes, Py_ssize_t max_value_chars,
            PyObject *render)
{
    memset(L, 0, sizeof *L);
    if (dec_init_shared(&L->d, max_attributes, max_value_chars, render) < 0)
        return -1;
    if (hints_presize(log_hints, &log_hint_input, L->num, LOG_BUFS, LN_TIMESTAMP, input_len)) {
        for (int i = 0; i < LS_NUM; i++)
            if (strcol_init(&L->str[i]) < 0)
                return -1;
        for (int i = 0; i < LA_NUM; i++)
            if (mapcol_init(&L->map[i]) < 0)
                return -1;
        return 0;
    }
    /* Else a guess of one record per 200 bytes of request, so that the columns seldom grow. */
    size_t rows = input_len / 200 + 1;
    if (buf_reserve(&L->num[LN_TIMESTAMP], 8 * rows) < 0 ||
        buf_reserve(&L->num[LN_OBSERVED], 8 * rows) < 0 ||
        buf_reserve(&L->num[LN_FLAGS], 4 * rows) < 0 ||
        buf_reserve(&L->num[LN_SEVERITY], rows) < 0)
        return -1;
    for (int i = 0; i < LS_NUM; i++) {
        if (buf_reserve(&L->str[i].offs, 4 * rows + 4) < 0 || strcol_init(&L->str[i]) < 0)
            return -1;
    }
    if (buf_reserve(&L->str[LS_BODY].data, 64 * rows) < 0 ||
        buf_reserve(&L->str[LS_TRACE_ID].data, 32 * rows) < 0 ||
        buf_reserve(&L->str[LS_SPAN_ID].data, 16 * rows) < 0)
        return -1;
    for (int i = 0; i < LA_NUM; i++) {
        if (buf_reserve(&L->map[i].offs, 4 * rows + 4) < 0 || mapcol_init(&L->map[i]) < 0)
            return -1;
    }
    return 0;
}

static void
logdec_free(LogDec *L)
{
    dec_free(&L->d);
    for (int i = 0; i < LN_NUM; i++)
        buf_free(&L->num[i]);
    for (int i = 0; i < LS_NUM; i++)
        strcol_free(&L->str[i]);
    for (int i = 0; i < LA_NUM; i++)
        mapcol_free(&L->map[i]);
    pairs_free(&L->log_pairs);
    pairs_free(&L->body_pairs);
    buf_free(&L->body_kv);
}

/* Every occurrence of LogRecord.body (field 5), as KeyValue.value fields: upb merges them, and
 * the callback parses the result as a KeyValue. Only for the rare array/map/strindex body. */
static int
collect_body(LogDec *L, const uint8_t *p, const uint8_t *end, int depth)
{
    L->body_kv.len = 0;
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num != 5 || f.wt != WT_LEN)
            continue;
        uint8_t head[6];
        size_t h = 0;
        head[h++] = 0x12; /* field 2, length-delimited */
        size_t n = f.n;
        do {
            head[h++] = (uint8_t)((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
            n >>= 7;
        } while (n);
        if (buf_put(&L->body_kv, head, h) < 0 || buf_put(&L->body_kv, f.p, f.n) < 0)
            return -1;
    }
    return 0;
}

static int
dec_log_record(LogDec *L, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    Dec *d = &L->d;
    const uint8_t *start = p;
    const uint8_t *empty = (const uint8_t *)"";
    Bytes trace = {empty, 0}, span = {empty, 0}, text = {empty, 0}, event = {empty, 0};
    uint64_t time = 0, observed = 0;
    uint32_t flags = 0;
    int32_t severity = 0;
    AnyValue body = {AV_NONE, NULL, 0, 0};
    Py_ssize_t dropped = d->dropped_attributes, truncated = d->truncated_values;
    PairList *pl = &L->log_pairs;
    pairs_reset(pl);
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        switch (f.num) {
        case 1:
        case 11:
            if (f.wt == WT_I64)
                *(f.num == 1 ? &time : &observed) = f.u;
            break;
        case 2:
            if (f.wt == WT_VARINT)
                severity = (int32_t)(uint32_t)f.u; /* an int32 enum keeps the low 32 bits */
            break;
        case 3:
        case 12:
            if (f.wt == WT_LEN) {
                if (check_utf8(&f) < 0)
                    return -1;
                Bytes *b = f.num == 3 ? &text : &event;
                b->p = f.p;
                b->n = f.n;
            }
            break;
        case 5:
            if (f.wt == WT_LEN && dec_anyvalue(f.p, f.p + f.n, &body, depth + 1) < 0)
                return -1;
            break;
        case 6:
            if (f.wt == WT_LEN && dec_attribute(d, pl, &f, depth + 1) < 0)
                return -1;
            break;
        case 8:
            if (f.wt == WT_I32)
                flags = (uint32_t)f.u;
            break;
        case 9:
        case 10:
            if (f.wt == WT_LEN) {
                Bytes *b = f.num == 9 ? &trace : &span;
                b->p = f.p;
                b->n = f.n;
            }
            break;
        default:
            break;
        }
    }

    int reason = -1;
    if (trace.n != 0 && trace.n != 16)
        reason = LR_TRACE_ID;
    else if (span.n != 0 && span.n != 8)
        reason = LR_SPAN_ID;
    else if (time > MAX_TIMESTAMP_NS || observed > MAX_TIMESTAMP_NS)
        reason = LR_TIMESTAMP;
    if (reason >= 0) {
        d->dropped_attributes = dropped;
        d->truncated_values = truncated;
        d->rejected++;
        if (d->first_reason < 0)
            d->first_reason = reason;
        return 0;
    }

    PairList *bl = &L->body_pairs;
    pairs_reset(bl);
    Pair *bp = pairs_push(bl);
    if (bp == NULL)
        return -1;
    if (body.kind == AV_COMPLEX && collect_body(L, start, end, depth) < 0)
        return -1;
    if (render_value(d, bl, bp, &body, (const uint8_t *)L->body_kv.p, L->body_kv.len) < 0)
        return -1;

    uint64_t ts = time ? time : observed;
    uint8_t sev = severity < 0 ? 0 : severity > 255 ? 255 : (uint8_t)severity;
    StrCol *s = L->str;
    if (buf_put_i64(&L->num[LN_TIMESTAMP], (int64_t)ts) < 0 ||
        buf_put_i64(&L->num[LN_OBSERVED], (int64_t)observed) < 0 ||
        buf_put(&L->num[LN_FLAGS], &flags, sizeof flags) < 0 ||
        buf_put(&L->num[LN_SEVERITY], &sev, 1) < 0 ||
        add_hex_or_empty(&s[LS_TRACE_ID], trace.p, trace.n) < 0 ||
        add_hex_or_empty(&s[LS_SPAN_ID], span.p, span.n) < 0 ||
        strcol_add(&s[LS_SEVERITY_TEXT], (const char *)text.p, text.n) < 0 ||
        strcol_add(&s[LS_SERVICE_NAME], d->service_name.p, d->service_name.len) < 0 ||
        strcol_add(&s[LS_BODY], pair_value(bl, bp), bp->vlen) < 0 ||
        strcol_add(&s[LS_RESOURCE_SCHEMA_URL], (const char *)L->resource_url.p,
                   L->resource_url.n) < 0 ||
        strcol_add(&s[LS_SCOPE_SCHEMA_URL], (const char *)L->scope_url.p, L->scope_url.n) < 0 ||
        strcol_add(&s[LS_SCOPE_NAME], d->scope_name, d->scope_name_len) < 0 ||
        strcol_add(&s[LS_SCOPE_VERSION], d->scope_version, d->scope_version_len) < 0 ||
        strcol_add(&s[LS_EVENT_NAME], (const char *)event.p, event.n) < 0)
        return -1;
    if (add_resource_scope_rows(d, &L->map[LA_RESOURCE], &L->map[LA_SCOPE]) < 0 ||
        pairs_to_row(pl, &L->map[LA_LOG]) < 0)
        return -1;
    L->rows++;
    return 0;
}

static int
dec_scope_logs(LogDec *L, const uint8_t *p, const uint8_t *end, int depth)
{
    Dec *d = &L->d;
    Py_ssize_t dropped = d->dropped_attributes, truncated = d->truncated_values;
    uint32_t scope_dropped;
    if (read_scope_x(d, p, end, depth, &L->scope_url, &scope_dropped) < 0)
        return -1;
    /* What the scope's own attributes cut counts only if the scope stores a record. */
    dropped = d->dropped_attributes - dropped;
    truncated = d->truncated_values - truncated;
    size_t before = L->rows;
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == 2 && f.wt == WT_LEN && dec_log_record(L, f.p, f.p + f.n, depth + 1) < 0)
            return -1;
    }
    if (L->rows == before) {
        d->dropped_attributes -= dropped;
        d->truncated_values -= truncated;
    }
    return 0;
}

static int
dec_resource_logs(LogDec *L, const uint8_t *p, const uint8_t *end, int depth)
{
    if (read_resource_x(&L->d, p, end, depth, &L->resource_url) < 0)
        return -1;
    size_t before = L->rows;
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == 2 && f.wt == WT_LEN && dec_scope_logs(L, f.p, f.p + f.n, depth + 1) < 0)
            return -1;
    }
    return put_resource_start(&L->d, before, L->rows);
}

static int
dec_logs_request(LogDec *L, const uint8_t *p, const uint8_t *end)
{
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, 0) < 0)
            return -1;
        if (f.num == 1 && f.wt == WT_LEN && dec_resource_logs(L, f.p, f.p + f.n, 1) < 0)
            return -1;
    }
    return 0;
}

/* The stored records as an otel_logs record batch (columns in the order of
 * opstrata.schema.LOGS), for root_capsule; without the GIL, as export_spans. */
static struct ArrowArray *
export_logs(LogDec *L)
{
    size_t n = L->rows;
    Holder *h;
    struct ArrowArray *root = new_root(&h);
    if (root == NULL)
        return NULL;
    StrCol *s = L->str;
    MapCol *m = L->map;
    struct ArrowArray *columns[] = {
        fixed_array(h, &L->num[LN_TIMESTAMP], n),
        fixed_array(h, &L->num[LN_OBSERVED], n),
        string_array(h, &s[LS_TRACE_ID]),
        string_array(h, &s[LS_SPAN_ID]),
        fixed_array(h, &L->num[LN_FLAGS], n),
        string_array(h, &s[LS_SEVERITY_TEXT]),
        fixed_array(h, &L->num[LN_SEVERITY], n),
        string_array(h, &s[LS_SERVICE_NAME]),
        string_array(h, &s[LS_BODY]),
        string_array(h, &s[LS_RESOURCE_SCHEMA_URL]),
        map_array(h, &m[LA_RESOURCE], n),
        string_array(h, &s[LS_SCOPE_SCHEMA_URL]),
        string_array(h, &s[LS_SCOPE_NAME]),
        string_array(h, &s[LS_SCOPE_VERSION]),
        map_array(h, &m[LA_SCOPE], n),
        map_array(h, &m[LA_LOG], n),
        string_array(h, &s[LS_EVENT_NAME]),
    };
    int n_columns = (int)(sizeof columns / sizeof columns[0]);
    new_array(h, root, n, 1, n_columns);
    for (int i = 0; i < n_columns; i++)
        root->children[i] = columns[i];
    return root;
}

PyDoc_STRVAR(decode_logs_doc,
"decode_logs(data, max_attributes, max_value_chars, render_complex)\n"
"--\n\n"
"Decode a serialized ExportLogsServiceRequest into otel_logs columns.\n\n"
"Returns (rejected, first_reason, dropped_attributes, truncated_values, batch, address,\n"
"nbytes, event_time) as decode_traces does, with the columns of opstrata.schema.LOGS.");

static PyObject *
wire_decode_logs(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t max_attributes, max_value_chars;
    PyObject *render;
    if (parse_decode_args(args, "y*nnO:decode_logs", &view, &max_attributes, &max_value_chars,
                          &render) < 0)
        return NULL;
    LogDec *L = PyMem_Malloc(sizeof *L); /* large: keep it off the C stack */
    PyObject *result = NULL;
    if (L == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    int parsed = -1;
    struct ArrowArray *root = NULL;
    long long event_time = 0;
    gil_release_for(&view); /* the parse runs without the GIL (gil_take in _wire.c) */
    if (logdec_init(L, (size_t)view.len, max_attributes, max_value_chars, render) == 0) {
        const uint8_t *p = view.buf;
        parsed = dec_logs_request(L, p, p + view.len);
        if (parsed == 0) {
            hints_learn(log_hints, &log_hint_input, L->num, LOG_BUFS, LN_TIMESTAMP,
                        (size_t)view.len);
            event_time = median_time(&L->num[LN_TIMESTAMP]); /* before the export moves it */
            if (L->rows != 0 && (root = export_logs(L)) == NULL)
                parsed = -1;
        }
    }
    gil_take(); /* error paths took it back already, with their exception */
    if (parsed == 0) {
        Dec *d = &L->d;
        PyObject *batch = root == NULL ? Py_NewRef(Py_None) : root_capsule(root);
        if (batch != NULL) {
            Py_ssize_t nbytes = root == NULL ? 0 : capsule_bytes(batch);
            result = Py_BuildValue("(nnnnNNnLy#)", d->rejected, (Py_ssize_t)d->first_reason,
                                   d->dropped_attributes, d->truncated_values, batch,
                                   PyLong_FromVoidPtr(root), nbytes, event_time,
                                   d->resource_starts.p ? d->resource_starts.p : "",
                                   (Py_ssize_t)d->resource_starts.len);
        }
    }
    logdec_free(L);
    PyMem_Free(L);
    PyBuffer_Release(&view);
    return result;
}
