/*
 * Included by _wire.c (one translation unit, so the static helpers stay private): the resource
 * and scope levels shared by the logs and metrics decoders.
 *
 * ResourceLogs and ResourceMetrics have the same shape (1: Resource, 2: the scopes, 3:
 * schema_url), and so have ScopeLogs and ScopeMetrics (1: InstrumentationScope, 2: the items, 3:
 * schema_url). The resource and scope may come after the items on the wire, so each level is
 * read in two passes: these functions make the first (everything but field 2), the decoders the
 * second.
 */

/* The first pass over a ResourceLogs/ResourceMetrics: renders the resource attributes into
 * d->res_keys/res_values once, finds service.name, and keeps the schema_url (last wins). */
static int
read_resource_x(Dec *d, const uint8_t *p, const uint8_t *end, int depth, Bytes *schema_url)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    PairList *pl = &d->res_pairs;
    pairs_reset(pl);
    schema_url->p = (const uint8_t *)"";
    schema_url->n = 0;
    Field f, g;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.wt != WT_LEN)
            continue;
        if (f.num == 1) {
            /* Resource; repeated occurrences merge. */
            int rdepth = depth + 1;
            if (rdepth > MAX_DEPTH)
                return fail("nesting too deep");
            const uint8_t *q = f.p, *qend = f.p + f.n;
            while (q < qend) {
                if (next_field(&q, qend, &g, rdepth) < 0)
                    return -1;
                if (g.wt != WT_LEN)
                    continue;
                if (g.num == 1) {
                    if (dec_attribute(d, pl, &g, rdepth + 1) < 0)
                        return -1;
                }
                else if (g.num == 3 &&
                         validate_msg(g.p, g.p + g.n, MSG_ENTITY_REF, rdepth + 1) < 0)
                    return -1;
            }
        }
        else if (f.num == 3) {
            if (check_utf8(&f) < 0)
                return -1;
            schema_url->p = f.p;
            schema_url->n = f.n;
        }
    }
    if (pairs_to_prepared(pl, &d->res_keys, &d->res_values) < 0)
        return -1;
    d->service_name.len = 0;
    for (size_t i = 0; i < pl->n; i++) {
        const Pair *pr = &pl->items[i];
        if (pr->klen == 12 && memcmp(pr->k, "service.name", 12) == 0)
            return buf_put(&d->service_name, pair_value(pl, pr), pr->vlen);
    }
    return 0;
}

/* The first pass over a ScopeLogs/ScopeMetrics: the scope's name, version, attributes
 * (rendered into d->scope_keys/scope_values) and dropped_attributes_count, and the
 * schema_url. Scalars keep their last value; attributes of repeated occurrences add up. */
static int
read_scope_x(Dec *d, const uint8_t *p, const uint8_t *end, int depth, Bytes *schema_url,
             uint32_t *dropped)
{
    if (depth > MAX_DEPTH)
        return fail("nesting too deep");
    PairList *pl = &d->scope_pairs;
    pairs_reset(pl);
    d->scope_name = d->scope_version = "";
    d->scope_name_len = d->scope_version_len = 0;
    schema_url->p = (const uint8_t *)"";
    schema_url->n = 0;
    *dropped = 0;
    Field f, g;
    while (p < end) {
        if (next_field(&p, end, &f, depth) < 0)
            return -1;
        if (f.wt != WT_LEN)
            continue;
        if (f.num == 1) {
            int sdepth = depth + 1;
            if (sdepth > MAX_DEPTH)
                return fail("nesting too deep");
            const uint8_t *q = f.p, *qend = f.p + f.n;
            while (q < qend) {
                if (next_field(&q, qend, &g, sdepth) < 0)
                    return -1;
                if (g.num == 4 && g.wt == WT_VARINT) {
                    *dropped = (uint32_t)g.u; /* a uint32 keeps the low 32 bits */
                    continue;
                }
                if (g.wt != WT_LEN)
                    continue;
                if (g.num == 1 || g.num == 2) {
                    if (check_utf8(&g) < 0)
                        return -1;
                    if (g.num == 1) {
                        d->scope_name = (const char *)g.p;
                        d->scope_name_len = g.n;
                    }
                    else {
                        d->scope_version = (const char *)g.p;
                        d->scope_version_len = g.n;
                    }
                }
                else if (g.num == 3 && dec_attribute(d, pl, &g, sdepth + 1) < 0)
                    return -1;
            }
        }
        else if (f.num == 3) {
            if (check_utf8(&f) < 0)
                return -1;
            schema_url->p = f.p;
            schema_url->n = f.n;
        }
    }
    return pairs_to_prepared(pl, &d->scope_keys, &d->scope_values);
}

/* The attribute-rendering state of a Dec without its span columns (logs and metrics use only
 * the limits, tallies, callback and the resource/scope scratch). */
static int
dec_init_shared(Dec *d, Py_ssize_t max_attributes, Py_ssize_t max_value_chars, PyObject *render)
{
    memset(d, 0, sizeof *d);
    d->first_reason = -1;
    d->max_attributes = (size_t)max_attributes;
    d->max_value_chars = (size_t)max_value_chars;
    d->render_complex = render;
    if (strcol_init(&d->res_keys) < 0 || strcol_init(&d->res_values) < 0 ||
        strcol_init(&d->scope_keys) < 0 || strcol_init(&d->scope_values) < 0)
        return -1;
    return 0;
}

/* Appends the current resource's and scope's prepared attributes as the next row of the two
 * map columns. */
static int
add_resource_scope_rows(Dec *d, MapCol *resource, MapCol *scope)
{
    if (strcol_append(&resource->k, &d->res_keys) < 0 ||
        strcol_append(&resource->v, &d->res_values) < 0 || mapcol_close_row(resource) < 0 ||
        strcol_append(&scope->k, &d->scope_keys) < 0 ||
        strcol_append(&scope->v, &d->scope_values) < 0 || mapcol_close_row(scope) < 0)
        return -1;
    return 0;
}

/* Parses the arguments every decode_* function takes. */
static int
parse_decode_args(PyObject *args, const char *format, Py_buffer *view, Py_ssize_t *max_attributes,
                  Py_ssize_t *max_value_chars, PyObject **render)
{
    if (!PyArg_ParseTuple(args, format, view, max_attributes, max_value_chars, render))
        return -1;
    if (*max_attributes < 0 || *max_value_chars < 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "limits must not be negative");
        return -1;
    }
    if (!PyCallable_Check(*render)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "render_complex must be callable");
        return -1;
    }
    return 0;
}
