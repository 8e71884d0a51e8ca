/*
 * Included by _wire.c: an ExportMetricsServiceRequest, as serialized bytes, straight into the
 * columns of the five otel_metrics_* tables. Semantics are those of decode_metrics()
 * (decode_metrics.py, metric_kinds.py) on the request parsed by upb;
 * tests/test_wire_decoder_metrics.py compares both.
 *
 *   - Each point type fills its own table, in request order within the table; decode_metrics
 *     emits the tables in the order gauge, sum, histogram, exponential histogram, summary.
 *   - A point whose start or time does not fit int64 is rejected (still parsed, as upb would,
 *     but what it cut is not counted); an exemplar's time is clamped instead.
 *   - The resource's attributes are counted for every ResourceMetrics, the scope's when the
 *     scope has at least one metric (decode_metrics renders a scope only then).
 *   - Metric.data is a oneof: a later member replaces an earlier one, and occurrences of the
 *     same member merge, so the points are those of the last run of the last member.
 *   - Gauge and sum values and exemplar values: as_double or as_int (whichever came last), as
 *     a double; 0.0 when neither. Histogram sum/min/max are null when absent.
 */

/* Fixed-width buffers of a table (not every table uses every one). */
enum {
    MN_START,
    MN_TIME,
    MN_FLAGS,
    MN_SCOPE_DROPPED,
    MN_EX_OFFSETS,
    MN_EX_TIME,
    MN_EX_VALUE,
    MN_VALUE,
    MN_TEMPORALITY,
    MN_MONOTONIC, /* one byte per row, packed into bits at export */
    MN_COUNT,
    MN_SUM,
    MN_SUM_VALID, /* one byte per row: 1 when present */
    MN_MIN,
    MN_MIN_VALID,
    MN_MAX,
    MN_MAX_VALID,
    MN_BUCKET_OFFSETS,
    MN_BUCKETS,
    MN_BOUND_OFFSETS,
    MN_BOUNDS,
    MN_SCALE,
    MN_ZERO_COUNT,
    MN_ZERO_THRESHOLD,
    MN_POS_OFFSET,
    MN_POS_OFFSETS,
    MN_POS_COUNTS,
    MN_NEG_OFFSET,
    MN_NEG_OFFSETS,
    MN_NEG_COUNTS,
    MN_Q_OFFSETS,
    MN_Q_QUANTILE,
    MN_Q_VALUE,
    MN_NUM
};
enum {
    MS_RESOURCE_URL,
    MS_SCOPE_NAME,
    MS_SCOPE_VERSION,
    MS_SCOPE_URL,
    MS_SERVICE,
    MS_NAME,
    MS_DESCRIPTION,
    MS_UNIT,
    MS_EX_SPAN,
    MS_EX_TRACE,
    MS_NUM
};
enum { MA_RESOURCE, MA_SCOPE, MA_ATTRS, MA_EX_ATTRS, MA_NUM };
/* The tables, in the order decode_metrics emits them; the Python wrapper maps the index. */
enum { T_GAUGE, T_SUM, T_HISTOGRAM, T_EXP_HISTOGRAM, T_SUMMARY, T_NUM };

typedef struct {
    int ready;
    size_t rows;
    Buf num[MN_NUM];
    StrCol str[MS_NUM];
    MapCol map[MA_NUM];
} MetricTable;

/* Where a point started writing, to undo a rejected one. */
typedef struct {
    size_t num[MN_NUM];
    StrMark str[MS_NUM];
    MapMark map[MA_NUM];
    Py_ssize_t dropped, truncated;
} TableMark;

typedef struct {
    Dec d;
    MetricTable t[T_NUM];
    PairList point_pairs, ex_pairs;
    Bytes resource_url, scope_url, name, description, unit;
    uint32_t scope_dropped;
    /* Per table, the row where each ResourceMetrics' points start (int32, ascending; only
     * resources that put points in that table), so that the store and the topology consumer
     * need not find the runs of one resource again by comparing rows. */
    Buf resource_starts[T_NUM];
    /* The enclosing Sum/Histogram/ExponentialHistogram's fields, for each of its points. */
    int32_t temporality;
    uint8_t monotonic;
    size_t input_len;
} MetricDec;

static const int OFFSET_BUFS[] = {MN_EX_OFFSETS,  MN_BUCKET_OFFSETS, MN_BOUND_OFFSETS,
                                  MN_POS_OFFSETS, MN_NEG_OFFSETS,    MN_Q_OFFSETS};

/* A table's columns are one run of Bufs (num, then str's two each, then map's five each), so
 * the size hints (hints_presize in _wire.c) walk them as an array. */
#define TABLE_BUFS (MN_NUM + 2 * MS_NUM + 5 * MA_NUM)
_Static_assert(offsetof(MetricTable, map) + sizeof(((MetricTable *)0)->map) ==
                   offsetof(MetricTable, num) + TABLE_BUFS * sizeof(Buf),
               "MetricTable's columns are not one run of Bufs");
_Static_assert(TABLE_BUFS <= MAX_HINTED_BUFS, "raise MAX_HINTED_BUFS");
static size_t metric_hints[T_NUM][TABLE_BUFS];
static size_t metric_hint_input[T_NUM];

static int
table_ready(MetricDec *M, MetricTable *t)
{
    if (t->ready)
        return 0;
    t->ready = 1;
    /* Else a guess of one point per 100 bytes of request for the common columns. */
    size_t rows = M->input_len / 100 + 1;
    size_t k = (size_t)(t - M->t);
    if (!hints_presize(metric_hints[k], &metric_hint_input[k], t->num, TABLE_BUFS, MN_TIME,
                       M->input_len) &&
        (buf_reserve(&t->num[MN_START], 8 * rows) < 0 ||
         buf_reserve(&t->num[MN_TIME], 8 * rows) < 0))
        return -1;
    for (size_t i = 0; i < sizeof OFFSET_BUFS / sizeof OFFSET_BUFS[0]; i++)
        if (buf_put_i32(&t->num[OFFSET_BUFS[i]], 0) < 0)
            return -1;
    for (int i = 0; i < MS_NUM; i++)
        if (strcol_init(&t->str[i]) < 0)
            return -1;
    for (int i = 0; i < MA_NUM; i++)
        if (mapcol_init(&t->map[i]) < 0)
            return -1;
    return 0;
}

static void
table_mark(const MetricDec *M, const MetricTable *t, TableMark *m)
{
    for (int i = 0; i < MN_NUM; i++)
        m->num[i] = t->num[i].len;
    for (int i = 0; i < MS_NUM; i++)
        strcol_mark(&t->str[i], &m->str[i]);
    for (int i = 0; i < MA_NUM; i++)
        mapcol_mark(&t->map[i], &m->map[i]);
    m->dropped = M->d.dropped_attributes;
    m->truncated = M->d.truncated_values;
}

static void
table_restore(MetricDec *M, MetricTable *t, const TableMark *m)
{
    for (int i = 0; i < MN_NUM; i++)
        t->num[i].len = m->num[i];
    for (int i = 0; i < MS_NUM; i++)
        strcol_restore(&t->str[i], &m->str[i]);
    for (int i = 0; i < MA_NUM; i++)
        mapcol_restore(&t->map[i], &m->map[i]);
    M->d.dropped_attributes = m->dropped;
    M->d.truncated_values = m->truncated;
}

static void
metricdec_free(MetricDec *M)
{
    dec_free(&M->d);
    for (int k = 0; k < T_NUM; k++) {
        MetricTable *t = &M->t[k];
        for (int i = 0; i < MN_NUM; i++)
            buf_free(&t->num[i]);
        for (int i = 0; i < MS_NUM; i++)
            strcol_free(&t->str[i]);
        for (int i = 0; i < MA_NUM; i++)
            mapcol_free(&t->map[i]);
    }
    for (int k = 0; k < T_NUM; k++)
        buf_free(&M->resource_starts[k]);
    pairs_free(&M->point_pairs);
    pairs_free(&M->ex_pairs);
}

static inline int
put_f64(Buf *b, double x)
{
    return buf_put(b, &x, sizeof x);
}

static inline double
as_f64(uint64_t u)
{
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* A sint32 as upb reads it: the varint's low 32 bits, zigzag-decoded. */
static inline int32_t
zigzag32(uint64_t u)
{
    uint32_t n = (uint32_t)u;
    return (int32_t)((n >> 1) ^ (0u - (n & 1)));
}

/* The value oneof of a NumberDataPoint or Exemplar: the member seen last. */
enum { NV_NONE, NV_DOUBLE, NV_INT };

static inline double
number_value(int which, uint64_t u)
{
    if (which == NV_DOUBLE)
        return as_f64(u);
    if (which == NV_INT)
        return (double)(int64_t)u;
    return 0.0;
}

/* A repeated fixed64 or double (field of wire type I64), packed or not, appended to `out`. */
static int
add_fixed64s(Buf *out, const Field *f)
{
    if (f->wt == WT_I64)
        return buf_put(out, &f->u, 8);
    if (f->wt != WT_LEN)
        return 0;
    if (f->n % 8)
        return fail("packed fixed64 field of bad length");
#if HOST_LITTLE_ENDIAN
    return buf_put(out, f->p, f->n); /* the wire's bytes are the column's */
#else
    if (buf_reserve(out, f->n) < 0)
        return -1;
    for (size_t i = 0; i < f->n; i += 8) {
        uint64_t v = load_le64(f->p + i);
        memcpy(out->p + out->len, &v, 8);
        out->len += 8;
    }
    return 0;
#endif
}

/* A repeated uint64 (varints), packed or not, appended to `out`. */
static int
add_varints(Buf *out, const Field *f)
{
    if (f->wt == WT_VARINT)
        return buf_put(out, &f->u, 8);
    if (f->wt != WT_LEN)
        return 0;
    const uint8_t *q = f->p, *qend = f->p + f->n;
    while (q < qend) {
        uint64_t v;
        if (read_varint(&q, qend, &v) < 0)
            return -1;
        if (buf_put(out, &v, 8) < 0)
            return -1;
    }
    return 0;
}

static int
dec_exemplar(MetricDec *M, MetricTable *t, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    const uint8_t *empty = (const uint8_t *)"";
    Bytes trace = {empty, 0}, span = {empty, 0};
    uint64_t time = 0, value = 0;
    int which = NV_NONE;
    PairList *pl = &M->ex_pairs;
    pairs_reset(pl);
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        switch (f.num) {
        case 2:
            if (f.wt == WT_I64)
                time = f.u;
            break;
        case 3:
        case 6:
            if (f.wt == WT_I64) {
                which = f.num == 3 ? NV_DOUBLE : NV_INT;
                value = f.u;
            }
            break;
        case 4:
        case 5:
            if (f.wt == WT_LEN) {
                Bytes *b = f.num == 4 ? &span : &trace;
                b->p = f.p;
                b->n = f.n;
            }
            break;
        case 7:
            if (f.wt == WT_LEN && dec_attribute(&M->d, pl, &f, depth + 1) < 0)
                return -1;
            break;
        default:
            break;
        }
    }
    /* A bad exemplar time should not cost the point it illustrates: clamp it. */
    if (time > MAX_TIMESTAMP_NS)
        time = MAX_TIMESTAMP_NS;
    if (buf_put_i64(&t->num[MN_EX_TIME], (int64_t)time) < 0 ||
        put_f64(&t->num[MN_EX_VALUE], number_value(which, value)) < 0 ||
        add_hex_or_empty(&t->str[MS_EX_SPAN], span.p, span.n) < 0 ||
        add_hex_or_empty(&t->str[MS_EX_TRACE], trace.p, trace.n) < 0)
        return -1;
    return pairs_to_row(pl, &t->map[MA_EX_ATTRS]);
}

/* A Buckets message (offset, bucket_counts) of an exponential histogram point. */
static int
dec_buckets(Buf *counts, int32_t *offset, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == 1 && f.wt == WT_VARINT)
            *offset = zigzag32(f.u);
        else if (f.num == 2 && add_varints(counts, &f) < 0)
            return -1;
    }
    return 0;
}

static int
dec_quantile(MetricTable *t, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    uint64_t quantile = 0, value = 0;
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.wt != WT_I64)
            continue;
        if (f.num == 1)
            quantile = f.u;
        else if (f.num == 2)
            value = f.u;
    }
    return buf_put(&t->num[MN_Q_QUANTILE], &quantile, 8) < 0 ||
                   buf_put(&t->num[MN_Q_VALUE], &value, 8) < 0
               ? -1
               : 0;
}

/* The fields of one point, as read; which are used depends on the table. */
typedef struct {
    uint64_t start, time, count, sum, min, max, zero_count, zero_threshold, value;
    int has_sum, has_min, has_max, which;
    uint32_t flags;
    int32_t scale, pos_offset, neg_offset;
} Point;

/* Reads one data point of table `k` into `pt` and the table's child columns. Field numbers
 * differ by point type; start (2) and time (3) are the same in all. */
static int
read_point(MetricDec *M, int k, Point *pt, const uint8_t *p, const uint8_t *end, int depth)
{
    MetricTable *t = &M->t[k];
    PairList *pl = &M->point_pairs;
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        uint32_t num = f.num;
        if ((num == 2 || num == 3) && f.wt == WT_I64) {
            *(num == 2 ? &pt->start : &pt->time) = f.u;
            continue;
        }
        /* Attributes: field 7 in number and summary points, 9 in histogram, 1 in exponential. */
        int attr_num = k == T_HISTOGRAM ? 9 : k == T_EXP_HISTOGRAM ? 1 : 7;
        if (num == (uint32_t)attr_num) {
            if (f.wt == WT_LEN && dec_attribute(&M->d, pl, &f, depth + 1) < 0)
                return -1;
            continue;
        }
        /* Exemplars: 5 in number points, 8 in histogram, 11 in exponential; none in summary. */
        int ex_num = k == T_HISTOGRAM ? 8 : k == T_EXP_HISTOGRAM ? 11 : k == T_SUMMARY ? -1 : 5;
        if (num == (uint32_t)ex_num) {
            if (f.wt == WT_LEN && dec_exemplar(M, t, f.p, f.p + f.n, depth + 1) < 0)
                return -1;
            continue;
        }
        switch (k) {
        case T_GAUGE:
        case T_SUM:
            if ((num == 4 || num == 6) && f.wt == WT_I64) {
                pt->which = num == 4 ? NV_DOUBLE : NV_INT;
                pt->value = f.u;
            }
            else if (num == 8 && f.wt == WT_VARINT)
                pt->flags = (uint32_t)f.u;
            break;
        case T_HISTOGRAM:
            if (num == 4 && f.wt == WT_I64)
                pt->count = f.u;
            else if ((num == 5 || num == 11 || num == 12) && f.wt == WT_I64) {
                if (num == 5)
                    pt->sum = f.u, pt->has_sum = 1;
                else if (num == 11)
                    pt->min = f.u, pt->has_min = 1;
                else
                    pt->max = f.u, pt->has_max = 1;
            }
            else if (num == 6 && add_fixed64s(&t->num[MN_BUCKETS], &f) < 0)
                return -1;
            else if (num == 7 && add_fixed64s(&t->num[MN_BOUNDS], &f) < 0)
                return -1;
            else if (num == 10 && f.wt == WT_VARINT)
                pt->flags = (uint32_t)f.u;
            break;
        case T_EXP_HISTOGRAM:
            if ((num == 4 || num == 7 || num == 14) && f.wt == WT_I64)
                *(num == 4 ? &pt->count : num == 7 ? &pt->zero_count : &pt->zero_threshold) = f.u;
            else if ((num == 5 || num == 12 || num == 13) && f.wt == WT_I64) {
                if (num == 5)
                    pt->sum = f.u, pt->has_sum = 1;
                else if (num == 12)
                    pt->min = f.u, pt->has_min = 1;
                else
                    pt->max = f.u, pt->has_max = 1;
            }
            else if (num == 6 && f.wt == WT_VARINT)
                pt->scale = zigzag32(f.u);
            else if ((num == 8 || num == 9) && f.wt == WT_LEN) {
                int pos = num == 8;
                if (dec_buckets(&t->num[pos ? MN_POS_COUNTS : MN_NEG_COUNTS],
                                pos ? &pt->pos_offset : &pt->neg_offset, f.p, f.p + f.n,
                                depth + 1) < 0)
                    return -1;
            }
            else if (num == 10 && f.wt == WT_VARINT)
                pt->flags = (uint32_t)f.u;
            break;
        default: /* T_SUMMARY */
            if (num == 4 && f.wt == WT_I64)
                pt->count = f.u;
            else if (num == 5 && f.wt == WT_I64)
                pt->sum = f.u;
            else if (num == 6 && f.wt == WT_LEN) {
                if (dec_quantile(t, f.p, f.p + f.n, depth + 1) < 0)
                    return -1;
            }
            else if (num == 8 && f.wt == WT_VARINT)
                pt->flags = (uint32_t)f.u;
            break;
        }
    }
    return 0;
}

static int
put_optional(Buf *values, Buf *valid, int present, uint64_t bits)
{
    uint8_t v = (uint8_t)present;
    if (!present)
        bits = 0;
    return buf_put(values, &bits, 8) < 0 || buf_put(valid, &v, 1) < 0 ? -1 : 0;
}

static int
dec_point(MetricDec *M, int k, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    MetricTable *t = &M->t[k];
    Dec *d = &M->d;
    if (table_ready(M, t) < 0)
        return -1;
    TableMark mark;
    table_mark(M, t, &mark);
    pairs_reset(&M->point_pairs);
    Point pt;
    memset(&pt, 0, sizeof pt);
    if (read_point(M, k, &pt, p, end, depth) < 0)
        return -1;
    if (pt.start > MAX_TIMESTAMP_NS || pt.time > MAX_TIMESTAMP_NS) {
        table_restore(M, t, &mark);
        d->rejected++;
        d->first_reason = 0;
        return 0;
    }

    Buf *n = t->num;
    StrCol *s = t->str;
    uint32_t scope_dropped = M->scope_dropped;
    if (buf_put_i64(&n[MN_START], (int64_t)pt.start) < 0 ||
        buf_put_i64(&n[MN_TIME], (int64_t)pt.time) < 0 ||
        buf_put(&n[MN_FLAGS], &pt.flags, 4) < 0 ||
        buf_put(&n[MN_SCOPE_DROPPED], &scope_dropped, 4) < 0 ||
        strcol_add(&s[MS_RESOURCE_URL], (const char *)M->resource_url.p, M->resource_url.n) < 0 ||
        strcol_add(&s[MS_SCOPE_NAME], d->scope_name, d->scope_name_len) < 0 ||
        strcol_add(&s[MS_SCOPE_VERSION], d->scope_version, d->scope_version_len) < 0 ||
        strcol_add(&s[MS_SCOPE_URL], (const char *)M->scope_url.p, M->scope_url.n) < 0 ||
        strcol_add(&s[MS_SERVICE], d->service_name.p, d->service_name.len) < 0 ||
        strcol_add(&s[MS_NAME], (const char *)M->name.p, M->name.n) < 0 ||
        strcol_add(&s[MS_DESCRIPTION], (const char *)M->description.p, M->description.n) < 0 ||
        strcol_add(&s[MS_UNIT], (const char *)M->unit.p, M->unit.n) < 0 ||
        add_resource_scope_rows(d, &t->map[MA_RESOURCE], &t->map[MA_SCOPE]) < 0 ||
        pairs_to_row(&M->point_pairs, &t->map[MA_ATTRS]) < 0 ||
        put_offset(&n[MN_EX_OFFSETS], strcol_rows(&s[MS_EX_SPAN])) < 0)
        return -1;
    int rc = 0;
    switch (k) {
    case T_GAUGE:
        rc = put_f64(&n[MN_VALUE], number_value(pt.which, pt.value));
        break;
    case T_SUM:
        rc = (put_f64(&n[MN_VALUE], number_value(pt.which, pt.value)) < 0 ||
              buf_put(&n[MN_TEMPORALITY], &M->temporality, 4) < 0 ||
              buf_put(&n[MN_MONOTONIC], &M->monotonic, 1) < 0)
                 ? -1
                 : 0;
        break;
    case T_HISTOGRAM:
    case T_EXP_HISTOGRAM:
        rc = (buf_put(&n[MN_COUNT], &pt.count, 8) < 0 ||
              put_optional(&n[MN_SUM], &n[MN_SUM_VALID], pt.has_sum, pt.sum) < 0 ||
              put_optional(&n[MN_MIN], &n[MN_MIN_VALID], pt.has_min, pt.min) < 0 ||
              put_optional(&n[MN_MAX], &n[MN_MAX_VALID], pt.has_max, pt.max) < 0 ||
              buf_put(&n[MN_TEMPORALITY], &M->temporality, 4) < 0)
                 ? -1
                 : 0;
        if (rc == 0 && k == T_HISTOGRAM)
            rc = (put_offset(&n[MN_BUCKET_OFFSETS], n[MN_BUCKETS].len / 8) < 0 ||
                  put_offset(&n[MN_BOUND_OFFSETS], n[MN_BOUNDS].len / 8) < 0)
                     ? -1
                     : 0;
        else if (rc == 0)
            rc = (buf_put(&n[MN_SCALE], &pt.scale, 4) < 0 ||
                  buf_put(&n[MN_ZERO_COUNT], &pt.zero_count, 8) < 0 ||
                  buf_put(&n[MN_ZERO_THRESHOLD], &pt.zero_threshold, 8) < 0 ||
                  buf_put(&n[MN_POS_OFFSET], &pt.pos_offset, 4) < 0 ||
                  put_offset(&n[MN_POS_OFFSETS], n[MN_POS_COUNTS].len / 8) < 0 ||
                  buf_put(&n[MN_NEG_OFFSET], &pt.neg_offset, 4) < 0 ||
                  put_offset(&n[MN_NEG_OFFSETS], n[MN_NEG_COUNTS].len / 8) < 0)
                     ? -1
                     : 0;
        break;
    default: /* T_SUMMARY */
        rc = (buf_put(&n[MN_COUNT], &pt.count, 8) < 0 ||
              buf_put(&n[MN_SUM], &pt.sum, 8) < 0 ||
              put_offset(&n[MN_Q_OFFSETS], n[MN_Q_QUANTILE].len / 8) < 0)
                 ? -1
                 : 0;
        break;
    }
    if (rc < 0)
        return -1;
    t->rows++;
    return 0;
}

/* Metric.data field numbers → table. */
static int
data_table(uint32_t num)
{
    switch (num) {
    case 5:
        return T_GAUGE;
    case 7:
        return T_SUM;
    case 9:
        return T_HISTOGRAM;
    case 10:
        return T_EXP_HISTOGRAM;
    case 11:
        return T_SUMMARY;
    default:
        return -1;
    }
}

/* One occurrence of Gauge/Sum/Histogram/ExponentialHistogram/Summary: its points (field 1). */
static int
dec_data_points(MetricDec *M, int k, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == 1 && f.wt == WT_LEN && dec_point(M, k, f.p, f.p + f.n, depth + 1) < 0)
            return -1;
    }
    return 0;
}

/* The temporality and monotonic flag of one data occurrence (last wins across occurrences). */
static int
read_data_fields(MetricDec *M, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.wt != WT_VARINT)
            continue;
        if (f.num == 2)
            M->temporality = (int32_t)(uint32_t)f.u;
        else if (f.num == 3)
            M->monotonic = f.u != 0;
    }
    return 0;
}

/* Metric.data field numbers, by table. */
static const uint32_t DATA_FIELD[T_NUM] = {5, 7, 9, 10, 11};
/* The validation kinds of the data messages, by table. */
static const int DATA_MSG[T_NUM] = {MSG_GAUGE, MSG_SUM, MSG_HISTOGRAM, MSG_EXP_HISTOGRAM,
                                    MSG_SUMMARY};

static int
dec_metric(MetricDec *M, const uint8_t *p, const uint8_t *end, int depth)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    const uint8_t *start = p;
    const uint8_t *empty = (const uint8_t *)"";
    M->name.p = M->description.p = M->unit.p = empty;
    M->name.n = M->description.n = M->unit.n = 0;
    int k = -1;
    const uint8_t *run = NULL; /* where the last run of the oneof member `k` begins */
    Field f;
    while (p < end) {
        const uint8_t *at = p;
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.wt != WT_LEN)
            continue;
        if (f.num >= 1 && f.num <= 3) {
            if (check_utf8(&f) < 0)
                return -1;
            Bytes *b = f.num == 1 ? &M->name : f.num == 2 ? &M->description : &M->unit;
            b->p = f.p;
            b->n = f.n;
        }
        else if (f.num == 12) {
            if (validate_msg(f.p, f.p + f.n, MSG_KEY_VALUE, depth + 1) < 0)
                return -1;
        }
        else {
            int table = data_table(f.num);
            if (table >= 0 && table != k) {
                k = table;
                run = at;
            }
        }
    }
    if (k < 0)
        return 0;
    /* Members replaced by a later one are parsed by upb all the same: check them. */
    for (p = start; p < run;) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        int table = f.wt == WT_LEN ? data_table(f.num) : -1;
        if (table >= 0 && validate_msg(f.p, f.p + f.n, DATA_MSG[table], depth + 1) < 0)
            return -1;
    }
    /* The last run: the member's own fields first (they may follow its points), then the
     * points. */
    M->temporality = 0;
    M->monotonic = 0;
    uint32_t want = DATA_FIELD[k];
    for (p = run; p < end;) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == want && f.wt == WT_LEN && read_data_fields(M, f.p, f.p + f.n, depth + 1) < 0)
            return -1;
    }
    for (p = run; p < end;) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == want && f.wt == WT_LEN &&
            dec_data_points(M, k, f.p, f.p + f.n, depth + 1) < 0)
            return -1;
    }
    return 0;
}

static int
dec_scope_metrics(MetricDec *M, const uint8_t *p, const uint8_t *end, int depth)
{
    Dec *d = &M->d;
    Py_ssize_t dropped = d->dropped_attributes, truncated = d->truncated_values;
    if (read_scope_x(d, p, end, depth, &M->scope_url, &M->scope_dropped) < 0)
        return -1;
    dropped = d->dropped_attributes - dropped;
    truncated = d->truncated_values - truncated;
    int metrics = 0;
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == 2 && f.wt == WT_LEN) {
            metrics = 1;
            if (dec_metric(M, f.p, f.p + f.n, depth + 1) < 0)
                return -1;
        }
    }
    /* What the scope's own attributes cut counts only if the scope has a metric. */
    if (!metrics) {
        d->dropped_attributes -= dropped;
        d->truncated_values -= truncated;
    }
    return 0;
}

static int
dec_resource_metrics(MetricDec *M, const uint8_t *p, const uint8_t *end, int depth)
{
    if (read_resource_x(&M->d, p, end, depth, &M->resource_url) < 0)
        return -1;
    size_t before[T_NUM];
    for (int k = 0; k < T_NUM; k++)
        before[k] = M->t[k].rows;
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.num == 2 && f.wt == WT_LEN && dec_scope_metrics(M, f.p, f.p + f.n, depth + 1) < 0)
            return -1;
    }
    /* Rejected points are undone, so a resource whose points were all rejected starts no run. */
    for (int k = 0; k < T_NUM; k++)
        if (M->t[k].rows > before[k] &&
            (before[k] > INT32_MAX ? fail("too many rows")
                                   : buf_put_i32(&M->resource_starts[k], (int32_t)before[k])) < 0)
            return -1;
    return 0;
}

static int
dec_metrics_request(MetricDec *M, const uint8_t *p, const uint8_t *end)
{
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f, 0) < 0)
            return -1;
        if (f.num == 1 && f.wt == WT_LEN && dec_resource_metrics(M, f.p, f.p + f.n, 1) < 0)
            return -1;
    }
    return 0;
}

/* ---- Export ---- */

/* One byte per row (0/1) → an Arrow bitmap in a new buffer owned by the holder; counts the
 * zeros. Returns NULL (no bitmap) when `nulls_only` and every byte is 1. */
static const void *
pack_bits(Holder *h, Buf *bytes, size_t rows, int nulls_only, int64_t *zeros)
{
    size_t ones = 0;
    for (size_t i = 0; i < rows; i++)
        ones += (uint8_t)bytes->p[i] != 0;
    *zeros = (int64_t)(rows - ones);
    if (nulls_only && ones == rows)
        return NULL;
    uint8_t *bits = calloc((rows + 7) / 8 + 1, 1);
    if (bits == NULL)
        return NULL; /* reported by the caller through no_memory */
    for (size_t i = 0; i < rows; i++)
        if (bytes->p[i])
            bits[i / 8] |= (uint8_t)(1u << (i % 8));
    h->owned[h->n_owned++] = bits;
    h->bytes += (int64_t)((rows + 7) / 8); /* what Arrow sizes a bitmap of `rows` bits */
    return bits;
}

/* A float64 column whose rows are null where `valid` holds 0. */
static struct ArrowArray *
nullable_array(Holder *h, Buf *values, Buf *valid, size_t rows, int *oom)
{
    struct ArrowArray *a = fixed_array(h, values, rows);
    int64_t nulls = 0;
    const void *bits = pack_bits(h, valid, rows, 1, &nulls);
    if (bits == NULL && nulls) {
        *oom = 1;
        nulls = 0;
    }
    a->buffers[0] = bits;
    a->null_count = nulls;
    return a;
}

static struct ArrowArray *
bool_array(Holder *h, Buf *bytes, size_t rows, int *oom)
{
    struct ArrowArray *a = new_array(h, NULL, rows, 2, 0);
    int64_t zeros;
    const void *bits = pack_bits(h, bytes, rows, 0, &zeros);
    if (bits == NULL) {
        *oom = 1;
        bits = EMPTY_BUFFER;
    }
    a->buffers[1] = bits;
    return a;
}

/* A list<fixed-width> column: row offsets into a child buffer of `items` values. */
static struct ArrowArray *
list_array(Holder *h, Buf *offsets, size_t rows, Buf *child, size_t items)
{
    struct ArrowArray *a = new_array(h, NULL, rows, 2, 1);
    a->buffers[1] = take(h, offsets);
    a->children[0] = fixed_array(h, child, items);
    return a;
}

/* The table's columns in the order of its opstrata.schema.METRICS_* schema, for root_capsule;
 * without the GIL, as export_spans. */
static struct ArrowArray *
export_metric_table(MetricTable *t, int k)
{
    size_t rows = t->rows;
    Holder *h;
    struct ArrowArray *root = new_root(&h);
    if (root == NULL)
        return NULL;
    Buf *n = t->num;
    StrCol *s = t->str;
    MapCol *m = t->map;
    int oom = 0;
    /* The table's buffers go into one block (each copied, its own memory freed right here):
     * ~90 buffers a table, freed by whichever thread releases the batch, cost more as
     * separate mallocs and cross-thread frees than the copy (docs/performance.md, "Ingest,
     * eleventh round: metric points"). Without the block (no memory), they are handed over. */
    size_t block = 0;
    for (size_t i = 0; i < TABLE_BUFS; i++)
        block += (n[i].len + 63) & ~(size_t)63; /* the columns are one run of Bufs */
    if (block != 0 && (h->arena = malloc(block)) != NULL) {
        h->arena_cap = block;
        h->owned[h->n_owned++] = h->arena;
    }
    struct ArrowArray *columns[32];
    int c = 0;
    columns[c++] = map_array(h, &m[MA_RESOURCE], rows);
    columns[c++] = string_array(h, &s[MS_RESOURCE_URL]);
    columns[c++] = string_array(h, &s[MS_SCOPE_NAME]);
    columns[c++] = string_array(h, &s[MS_SCOPE_VERSION]);
    columns[c++] = map_array(h, &m[MA_SCOPE], rows);
    columns[c++] = fixed_array(h, &n[MN_SCOPE_DROPPED], rows);
    columns[c++] = string_array(h, &s[MS_SCOPE_URL]);
    columns[c++] = string_array(h, &s[MS_SERVICE]);
    columns[c++] = string_array(h, &s[MS_NAME]);
    columns[c++] = string_array(h, &s[MS_DESCRIPTION]);
    columns[c++] = string_array(h, &s[MS_UNIT]);
    columns[c++] = map_array(h, &m[MA_ATTRS], rows);
    columns[c++] = fixed_array(h, &n[MN_START], rows);
    columns[c++] = fixed_array(h, &n[MN_TIME], rows);

    struct ArrowArray *exemplars = NULL;
    if (k != T_SUMMARY) {
        size_t items = strcol_rows(&s[MS_EX_SPAN]);
        struct ArrowArray *fields[] = {
            map_array(h, &m[MA_EX_ATTRS], items),
            fixed_array(h, &n[MN_EX_TIME], items),
            fixed_array(h, &n[MN_EX_VALUE], items),
            string_array(h, &s[MS_EX_SPAN]),
            string_array(h, &s[MS_EX_TRACE]),
        };
        exemplars = list_of_structs(h, &n[MN_EX_OFFSETS], rows, items, fields, 5);
    }
    switch (k) {
    case T_GAUGE:
        columns[c++] = fixed_array(h, &n[MN_VALUE], rows);
        columns[c++] = fixed_array(h, &n[MN_FLAGS], rows);
        columns[c++] = exemplars;
        break;
    case T_SUM:
        columns[c++] = fixed_array(h, &n[MN_VALUE], rows);
        columns[c++] = fixed_array(h, &n[MN_FLAGS], rows);
        columns[c++] = exemplars;
        columns[c++] = fixed_array(h, &n[MN_TEMPORALITY], rows);
        columns[c++] = bool_array(h, &n[MN_MONOTONIC], rows, &oom);
        break;
    case T_HISTOGRAM:
        columns[c++] = fixed_array(h, &n[MN_COUNT], rows);
        columns[c++] = nullable_array(h, &n[MN_SUM], &n[MN_SUM_VALID], rows, &oom);
        columns[c++] = list_array(h, &n[MN_BUCKET_OFFSETS], rows, &n[MN_BUCKETS],
                                  n[MN_BUCKETS].len / 8);
        columns[c++] = list_array(h, &n[MN_BOUND_OFFSETS], rows, &n[MN_BOUNDS],
                                  n[MN_BOUNDS].len / 8);
        columns[c++] = exemplars;
        columns[c++] = fixed_array(h, &n[MN_FLAGS], rows);
        columns[c++] = nullable_array(h, &n[MN_MIN], &n[MN_MIN_VALID], rows, &oom);
        columns[c++] = nullable_array(h, &n[MN_MAX], &n[MN_MAX_VALID], rows, &oom);
        columns[c++] = fixed_array(h, &n[MN_TEMPORALITY], rows);
        break;
    case T_EXP_HISTOGRAM:
        columns[c++] = fixed_array(h, &n[MN_COUNT], rows);
        columns[c++] = nullable_array(h, &n[MN_SUM], &n[MN_SUM_VALID], rows, &oom);
        columns[c++] = fixed_array(h, &n[MN_SCALE], rows);
        columns[c++] = fixed_array(h, &n[MN_ZERO_COUNT], rows);
        columns[c++] = fixed_array(h, &n[MN_POS_OFFSET], rows);
        columns[c++] = list_array(h, &n[MN_POS_OFFSETS], rows, &n[MN_POS_COUNTS],
                                  n[MN_POS_COUNTS].len / 8);
        columns[c++] = fixed_array(h, &n[MN_NEG_OFFSET], rows);
        columns[c++] = list_array(h, &n[MN_NEG_OFFSETS], rows, &n[MN_NEG_COUNTS],
                                  n[MN_NEG_COUNTS].len / 8);
        columns[c++] = exemplars;
        columns[c++] = fixed_array(h, &n[MN_FLAGS], rows);
        columns[c++] = nullable_array(h, &n[MN_MIN], &n[MN_MIN_VALID], rows, &oom);
        columns[c++] = nullable_array(h, &n[MN_MAX], &n[MN_MAX_VALID], rows, &oom);
        columns[c++] = fixed_array(h, &n[MN_TEMPORALITY], rows);
        columns[c++] = fixed_array(h, &n[MN_ZERO_THRESHOLD], rows);
        break;
    default: { /* T_SUMMARY */
        columns[c++] = fixed_array(h, &n[MN_COUNT], rows);
        columns[c++] = fixed_array(h, &n[MN_SUM], rows);
        size_t items = n[MN_Q_QUANTILE].len / 8;
        struct ArrowArray *fields[] = {
            fixed_array(h, &n[MN_Q_QUANTILE], items),
            fixed_array(h, &n[MN_Q_VALUE], items),
        };
        columns[c++] = list_of_structs(h, &n[MN_Q_OFFSETS], rows, items, fields, 2);
        columns[c++] = fixed_array(h, &n[MN_FLAGS], rows);
        break;
    }
    }
    new_array(h, root, rows, 1, c);
    for (int i = 0; i < c; i++)
        root->children[i] = columns[i];
    if (oom) {
        release_array(root);
        free(root);
        no_memory();
        return NULL;
    }
    return root;
}

PyDoc_STRVAR(decode_metrics_doc,
"decode_metrics(data, max_attributes, max_value_chars, render_complex)\n"
"--\n\n"
"Decode a serialized ExportMetricsServiceRequest into the otel_metrics_* columns.\n\n"
"Returns (rejected, dropped_attributes, truncated_values, tables): tables is a list of\n"
"(table index, capsule, address, nbytes, event_time, resource_starts) for each table that\n"
"received points, in\n"
"the order gauge (0), sum (1), histogram (2), exponential histogram (3), summary (4); each\n"
"capsule holds a struct array with the columns of that table's opstrata.schema.METRICS_*\n"
"schema, nbytes is its buffer bytes as pyarrow's get_total_buffer_size counts them, and\n"
"event_time the median of its TimeUnix column as decode_traces says (-1: not worked out),\n"
"resource_starts the rows where each ResourceMetrics' points start (native int32 bytes).");

static PyObject *
wire_decode_metrics(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t max_attributes, max_value_chars;
    PyObject *render;
    if (parse_decode_args(args, "y*nnO:decode_metrics", &view, &max_attributes,
                          &max_value_chars, &render) < 0)
        return NULL;
    MetricDec *M = PyMem_Calloc(1, sizeof *M);
    if (M == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    PyObject *result = NULL, *tables = NULL;
    struct ArrowArray *roots[T_NUM] = {NULL};
    long long event_times[T_NUM] = {0};
    M->input_len = (size_t)view.len;
    if (dec_init_shared(&M->d, max_attributes, max_value_chars, render) < 0)
        goto done;
    const uint8_t *p = view.buf;
    gil_release_for(&view); /* the parse runs without the GIL (gil_take in _wire.c) */
    int parsed = dec_metrics_request(M, p, p + view.len);
    if (parsed == 0) {
        for (int k = 0; k < T_NUM; k++)
            hints_learn(metric_hints[k], &metric_hint_input[k], M->t[k].num, TABLE_BUFS, MN_TIME,
                        M->input_len);
        /* The export is plain C too: only the capsules and tuples need the GIL. */
        for (int k = 0; k < T_NUM && parsed == 0; k++) {
            if (M->t[k].rows == 0)
                continue;
            event_times[k] = median_time(&M->t[k].num[MN_TIME]); /* before the export */
            if ((roots[k] = export_metric_table(&M->t[k], k)) == NULL)
                parsed = -1;
        }
    }
    gil_take(); /* error paths took it back already, with their exception */
    if (parsed < 0)
        goto done;
    if ((tables = PyList_New(0)) == NULL)
        goto done;
    for (int k = 0; k < T_NUM; k++) {
        if (roots[k] == NULL)
            continue;
        struct ArrowArray *root = roots[k];
        roots[k] = NULL; /* the capsule owns it now, or root_capsule freed it */
        PyObject *capsule = root_capsule(root);
        if (capsule == NULL)
            goto done;
        Py_ssize_t nbytes = capsule_bytes(capsule);
        Buf *starts = &M->resource_starts[k];
        PyObject *item = Py_BuildValue("(iNNnLy#)", k, capsule, PyLong_FromVoidPtr(root), nbytes,
                                       event_times[k], starts->p ? starts->p : "",
                                       (Py_ssize_t)starts->len);
        if (item == NULL || PyList_Append(tables, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    result = Py_BuildValue("(nnnO)", M->d.rejected, M->d.dropped_attributes,
                           M->d.truncated_values, tables);
done:
    for (int k = 0; k < T_NUM; k++)
        if (roots[k] != NULL) {
            release_array(roots[k]);
            free(roots[k]);
        }
    Py_XDECREF(tables);
    metricdec_free(M);
    PyMem_Free(M);
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Concatenation of exported tables: the store's commit                                       */
/* ------------------------------------------------------------------------------------------ */

/* The store commits hundreds of requests of a table at once. Importing each request's arrays
 * into pyarrow and concatenating them there costs per Arrow node (an ArrayData, its vectors,
 * a Buffer and a control block per buffer, allocated at import and again by the concatenation,
 * freed with the GIL held): ~115 nodes per metrics request, more than the rows' bytes cost.
 * Here the still-exported arrays of many requests are concatenated directly, without the GIL,
 * into one exported tree, which is then imported once. The layout string names each node's
 * kind in pre-order (the types' physical layouts, from the table's schema):
 * 'S' struct, 'L' list or map (int32 offsets, one child), 'U' utf8 (int32 offsets, data),
 * 'B' boolean (a bitmap), '1' '2' '4' '8' fixed width of that many bytes. */

typedef struct {
    const struct ArrowArray *a;
    int64_t start; /* logical, before a->offset is added */
    int64_t count;
} CatPart;

typedef struct {
    Holder *h;
    const char *layout;
    int oom;
    int bad; /* the arrays do not have the layout's shape */
} CatState;

/* A buffer of the output, owned by the holder; EMPTY_BUFFER (never written) when out of
 * memory or empty. */
static void *
cat_own(CatState *s, size_t bytes)
{
    if (bytes == 0)
        return (void *)EMPTY_BUFFER;
    if (s->h->n_owned >= MAX_OWNED) {
        s->bad = 1;
        return (void *)EMPTY_BUFFER;
    }
    void *p = malloc(bytes);
    if (p == NULL) {
        s->oom = 1;
        return (void *)EMPTY_BUFFER;
    }
    s->h->owned[s->h->n_owned++] = p;
    return p;
}

static inline int
cat_bit(const uint8_t *bits, int64_t i)
{
    return (bits[i >> 3] >> (i & 7)) & 1;
}

/* Copies the parts' bits (a validity bitmap, or a boolean's values) into one bitmap; a part
 * without a bitmap (NULL: all valid) contributes ones. Returns the zero bits written. */
static int64_t
cat_bits(uint8_t *out, const CatPart *parts, Py_ssize_t n, int buffer)
{
    int64_t at = 0, zeros = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *bits = parts[i].a->buffers[buffer];
        int64_t first = parts[i].a->offset + parts[i].start;
        for (int64_t j = 0; j < parts[i].count; j++, at++) {
            int bit = bits == NULL ? 1 : cat_bit(bits, first + j);
            if (bit)
                out[at >> 3] |= (uint8_t)(1u << (at & 7));
            else
                zeros++;
        }
    }
    return zeros;
}

/* Offsets (int32) of the parts rebased into one buffer; each part's child range goes to
 * child_parts (when given). Returns the child items in all, or -1 past int32. */
static int64_t
cat_offsets(int32_t *out, const CatPart *parts, Py_ssize_t n, CatPart *child_parts,
            int child)
{
    int64_t at = 0, base = 0;
    out[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int32_t *offs = parts[i].a->buffers[1];
        int64_t first = parts[i].a->offset + parts[i].start;
        int64_t from = parts[i].count ? offs[first] : 0;
        for (int64_t j = 1; j <= parts[i].count; j++) {
            int64_t value = base + (offs[first + j] - from);
            if (value > INT32_MAX)
                return -1;
            out[++at] = (int32_t)value;
        }
        int64_t items = parts[i].count ? offs[first + parts[i].count] - from : 0;
        if (child_parts != NULL) {
            child_parts[i].a = parts[i].a->children[child];
            child_parts[i].start = from;
            child_parts[i].count = items;
        }
        base += items;
    }
    return base;
}

static int
cat_width(char kind)
{
    return kind == '1' ? 1 : kind == '2' ? 2 : kind == '4' ? 4 : kind == '8' ? 8 : 0;
}

/* One node (and its children) of the output, from the same node of every part. */
static struct ArrowArray *
cat_node(CatState *s, const CatPart *parts, Py_ssize_t n, struct ArrowArray *into)
{
    char kind = *s->layout++;
    int width = cat_width(kind);
    int n_buffers = kind == 'S' ? 1 : kind == 'U' ? 3 : 2;
    int64_t n_children = parts[0].a->n_children;
    int64_t total = 0;
    int nullable = 0;
    if ((kind != 'S' && kind != 'L' && kind != 'U' && kind != 'B' && width == 0) ||
        (kind == 'L' && n_children != 1) || (kind != 'S' && kind != 'L' && n_children != 0)) {
        s->bad = 1;
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const struct ArrowArray *a = parts[i].a;
        if (a->n_buffers != n_buffers || a->n_children != n_children || a->release == NULL) {
            s->bad = 1;
            return NULL;
        }
        total += parts[i].count;
        if (a->buffers[0] != NULL && a->null_count != 0)
            nullable = 1;
    }
    struct ArrowArray *out = new_array(s->h, into, (size_t)total, n_buffers, (int)n_children);
    if (nullable) {
        uint8_t *bits = cat_own(s, (size_t)(total + 7) / 8);
        if (!s->oom && !s->bad) {
            memset(bits, 0, (size_t)(total + 7) / 8);
            out->buffers[0] = bits;
            out->null_count = cat_bits(bits, parts, n, 0);
        }
    }
    if (width) {
        char *data = cat_own(s, (size_t)total * (size_t)width);
        out->buffers[1] = data;
        if (!s->oom && !s->bad)
            for (Py_ssize_t i = 0, at = 0; i < n; i++) {
                const char *from = parts[i].a->buffers[1];
                size_t bytes = (size_t)parts[i].count * (size_t)width;
                if (bytes)
                    memcpy(data + at, from + (parts[i].a->offset + parts[i].start) * width,
                           bytes);
                at += (Py_ssize_t)bytes;
            }
    } else if (kind == 'B') {
        uint8_t *bits = cat_own(s, (size_t)(total + 7) / 8);
        out->buffers[1] = bits;
        if (!s->oom && !s->bad) {
            memset(bits, 0, (size_t)(total + 7) / 8);
            cat_bits(bits, parts, n, 1);
        }
    } else if (kind == 'U' || kind == 'L') {
        int32_t *offs = cat_own(s, (size_t)(total + 1) * sizeof(int32_t));
        out->buffers[1] = offs;
        CatPart *child_parts = NULL;
        if (kind == 'L' && (child_parts = malloc((size_t)n * sizeof *child_parts)) == NULL)
            s->oom = 1;
        int64_t items = 0;
        if (!s->oom && !s->bad && (items = cat_offsets(offs, parts, n, child_parts, 0)) < 0) {
            s->bad = 1; /* offsets past int32: no block of (size_t)-1 bytes to ask for */
            items = 0;
        }
        if (kind == 'U') {
            char *data = cat_own(s, (size_t)items);
            out->buffers[2] = data;
            if (!s->oom && !s->bad)
                for (Py_ssize_t i = 0, at = 0; i < n; i++) {
                    const int32_t *o = parts[i].a->buffers[1];
                    int64_t first = parts[i].a->offset + parts[i].start;
                    if (parts[i].count == 0)
                        continue;
                    size_t bytes = (size_t)(o[first + parts[i].count] - o[first]);
                    if (bytes)
                        memcpy(data + at, (const char *)parts[i].a->buffers[2] + o[first], bytes);
                    at += (Py_ssize_t)bytes;
                }
        } else {
            if (child_parts == NULL || s->oom || s->bad) {
                free(child_parts);
                return NULL;
            }
            out->children[0] = cat_node(s, child_parts, n, NULL);
            free(child_parts);
            if (out->children[0] == NULL)
                return NULL;
        }
    }
    if (kind == 'S') {
        CatPart *child_parts = malloc((size_t)n * sizeof *child_parts);
        if (child_parts == NULL) {
            s->oom = 1;
            return NULL;
        }
        for (int64_t c = 0; c < n_children; c++) {
            for (Py_ssize_t i = 0; i < n; i++) {
                child_parts[i].a = parts[i].a->children[c];
                child_parts[i].start = parts[i].a->offset + parts[i].start;
                child_parts[i].count = parts[i].count;
            }
            if ((out->children[c] = cat_node(s, child_parts, n, NULL)) == NULL) {
                free(child_parts);
                return NULL;
            }
        }
        free(child_parts);
    }
    return out;
}

/* Fills every child link a failed concatenation left unset with an empty array, so that the
 * partial tree can be released as a whole. */
static void
cat_patch(Holder *h, struct ArrowArray *a)
{
    for (int64_t i = 0; i < a->n_children; i++) {
        if (a->children[i] == NULL)
            a->children[i] = new_array(h, NULL, 0, 1, 0);
        else
            cat_patch(h, a->children[i]);
    }
}

PyDoc_STRVAR(concat_tables_doc,
"concat_tables(layout, capsules)\n"
"--\n\n"
"Concatenate exported struct arrays of one table (\"arrow_array\" capsules as decode_metrics\n"
"returns them, not yet imported) into one, copying their buffers without the GIL. layout\n"
"names each node's physical kind in pre-order (S struct, L list or map, U utf8, B boolean,\n"
"1/2/4/8 fixed width). The capsules are left as they were. Returns (capsule, address) of the\n"
"result, as decode_metrics does. Raises ValueError when an array does not have the layout's\n"
"shape or was imported already.");

static PyObject *
wire_concat_tables(PyObject *self, PyObject *args)
{
    (void)self;
    const char *layout;
    Py_ssize_t layout_len;
    PyObject *capsules;
    if (!PyArg_ParseTuple(args, "y#O!:concat_tables", &layout, &layout_len, &PyList_Type,
                          &capsules))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(capsules);
    if (n == 0 || layout_len == 0 || layout[0] != 'S') {
        PyErr_SetString(PyExc_ValueError, "concat_tables needs capsules and a struct layout");
        return NULL;
    }
    CatPart *parts = PyMem_Malloc((size_t)n * sizeof *parts);
    if (parts == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        struct ArrowArray *a = PyCapsule_GetPointer(PyList_GET_ITEM(capsules, i), "arrow_array");
        if (a == NULL) {
            PyMem_Free(parts);
            return NULL;
        }
        parts[i].a = a;
        parts[i].start = 0;
        parts[i].count = a->length;
    }
    struct ArrowArray *root = calloc(1, sizeof *root); /* release NULL until built */
    Holder *h = calloc(1, sizeof *h);
    if (root == NULL || h == NULL) {
        free(root);
        free(h);
        PyMem_Free(parts);
        return PyErr_NoMemory();
    }
    CatState s = {h, layout, 0, 0};
    /* The capsules stay referenced by the caller's list, which holds them for the call. */
    Py_BEGIN_ALLOW_THREADS
    h->refs = 1; /* held until the tree is whole, so that no release frees it early */
    struct ArrowArray *done = cat_node(&s, parts, n, root);
    if (done == NULL || s.oom || s.bad || *s.layout != '\0') {
        if (done == NULL && root->release == NULL)
            new_array(h, root, 0, 1, 0);
        cat_patch(h, root);
        s.bad = s.bad || (!s.oom && done != NULL);
        release_array(root);
        root->release = NULL;
    }
    holder_unref(h);
    Py_END_ALLOW_THREADS
    PyMem_Free(parts);
    if (root->release == NULL) {
        free(root);
        if (s.oom)
            return PyErr_NoMemory();
        PyErr_SetString(PyExc_ValueError, "arrays do not have the layout's shape");
        return NULL;
    }
    PyObject *capsule = root_capsule(root);
    if (capsule == NULL)
        return NULL;
    return Py_BuildValue("(NN)", capsule, PyLong_FromVoidPtr(root));
}

PyDoc_STRVAR(release_tables_doc,
"release_tables(capsules)\n"
"--\n\n"
"Free the buffers of exported arrays (\"arrow_array\" capsules) now, without the GIL; the\n"
"capsules stay valid and free nothing more. Arrays already imported are skipped.");

static PyObject *
wire_release_tables(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *capsules;
    if (!PyArg_ParseTuple(args, "O!:release_tables", &PyList_Type, &capsules))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(capsules);
    struct ArrowArray **roots = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *roots);
    if (roots == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        roots[i] = PyCapsule_GetPointer(PyList_GET_ITEM(capsules, i), "arrow_array");
        if (roots[i] == NULL) {
            PyMem_Free(roots);
            return NULL;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        if (roots[i]->release != NULL)
            roots[i]->release(roots[i]);
    Py_END_ALLOW_THREADS
    PyMem_Free(roots);
    Py_RETURN_NONE;
}
