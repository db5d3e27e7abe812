/* A client's request head read into its fields in one pass: the C version of
 * router.http.request_head.request_fields (docs/performance.md, "Made").
 *
 * fields(buf, pos, k) takes a head that llhttp has just accepted whole, from the bytes llhttp
 * was given: buf (bytes, or the bytearray a read went into) from pos, where llhttp began it
 * (the empty lines llhttp skips before a request line included). It returns
 * ([(name, value), ...], http11): the fields, what llhttp reports to a protocol with on_header
 * one callback at a time (the name up to the first colon, the value after it with its leading
 * spaces and tabs left out: llhttp keeps trailing ones, and so does this); and whether the
 * request line is HTTP/1.1 as request_head.http11_line tells it, k bytes into the line being
 * its method, its target and two spaces.
 *
 * llhttp's strict syntax is relied on, not checked again: every line ends in CRLF (a CR is
 * nowhere else), every field line has a colon, the empty line ends the head. Bytes that do not
 * hold a whole head from pos raise ValueError. tests/protocol/test_request_fields.py checks it
 * against llhttp's own reports.
 *
 * With it, the C versions of the rest of request_head's per-request reading, each held equal to
 * its Python version by tests/unit/test_request_head_c.py:
 *   classify(fields, trusted, http11, max_header): request_head.classify, the one pass over
 *     the fields (their sizes; the special ones told apart by name without a lowercase copy and
 *     a set lookup per field; the forwarded lines of the others in one bytes);
 *   plain_target(url): request_head.plain_target, whether a target needs the path checks;
 *   host(value): request_head.read_host, a Host value stripped and its syntax checked;
 *   concat(*parts): b"".join(parts) of bytes, the forwarded head in one allocation. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fields(buf, pos, k)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t k = PyLong_AsSsize_t(args[2]);
    if (k == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *s = view.buf;
    const Py_ssize_t n = view.len;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    if (pos < 0)
        goto bad;
    while (pos < n && (s[pos] == '\r' || s[pos] == '\n'))
        pos++;  /* empty lines before the request line */
    const char *end = s + n;
    const char *p = pos < n ? memchr(s + pos, '\r', n - pos) : NULL;
    if (p == NULL)
        goto bad;
    /* (no CR comes before a line's end: "HTTP/1.1" CR LF at k are the line's end, if there) */
    const int http11 = k >= 0 && pos + k + 10 <= n && memcmp(s + pos + k, "HTTP/1.1\r\n", 10) == 0;
    p += 2;  /* past the request line */
    while (p < end && *p != '\r') {
        const char *eol = memchr(p, '\r', end - p);
        if (eol == NULL)
            goto bad;
        const char *colon = memchr(p, ':', eol - p);
        if (colon == NULL)
            goto bad;
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        PyObject *t = PyTuple_New(2);
        if (t == NULL)
            goto fail;
        PyObject *name = PyBytes_FromStringAndSize(p, colon - p);
        PyObject *value = PyBytes_FromStringAndSize(v, eol - v);
        if (name == NULL || value == NULL) {
            Py_XDECREF(name);
            Py_XDECREF(value);
            Py_DECREF(t);
            goto fail;
        }
        PyTuple_SET_ITEM(t, 0, name);
        PyTuple_SET_ITEM(t, 1, value);
        int err = PyList_Append(out, t);
        Py_DECREF(t);
        if (err < 0)
            goto fail;
        p = eol + 2;
    }
    if (p + 1 >= end || p[1] != '\n')
        goto bad;  /* no empty line: not a whole head */
    PyBuffer_Release(&view);
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, out);
    PyTuple_SET_ITEM(t, 1, Py_NewRef(http11 ? Py_True : Py_False));
    return t;
bad:
    PyErr_SetString(PyExc_ValueError, "not a whole request head");
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

/* The kinds of field classify tells apart (request_head's K_* constants: the same numbers).
 * ORDINARY fields are passed on as they are; TRUSTED_ONLY ones only from a trusted proxy; the
 * others are read by request_head (SPECIAL_MAX and below: reported) or DROPPED (the hop-by-hop
 * fields it does not read: never passed on, trusted proxy or not). */
enum {
    ORDINARY = 0, K_HOST = 1, K_LENGTH = 2, K_TE = 3, K_CONNECTION = 4, K_UPGRADE = 5,
    K_XFF = 6, K_RID = 7, K_XFP = 8, K_XFH = 9, K_EXPECT = 10, K_COOKIE = 11,
    SPECIAL_MAX = 11, TRUSTED_ONLY = 12, DROPPED = 13,
};

struct name { const char *lower; Py_ssize_t len; int kind; };

/* request_head._KINDS: every name its loop looks at, lowercase. */
#define N(s, k) {s, sizeof(s) - 1, k}
static const struct name names[] = {
    N("host", K_HOST), N("content-length", K_LENGTH), N("transfer-encoding", K_TE),
    N("connection", K_CONNECTION), N("upgrade", K_UPGRADE), N("x-forwarded-for", K_XFF),
    N("x-request-id", K_RID), N("x-forwarded-proto", K_XFP), N("x-forwarded-host", K_XFH),
    N("expect", K_EXPECT), N("cookie", K_COOKIE),
    /* the other hop-by-hop fields */
    N("keep-alive", DROPPED), N("proxy-connection", DROPPED), N("te", DROPPED),
    N("trailer", DROPPED),
    /* request_head._TRUSTED_ONLY */
    N("forwarded", TRUSTED_ONLY), N("x-real-ip", TRUSTED_ONLY), N("true-client-ip", TRUSTED_ONLY),
    N("cf-connecting-ip", TRUSTED_ONLY), N("fastly-client-ip", TRUSTED_ONLY),
    N("x-client-ip", TRUSTED_ONLY), N("x-cluster-client-ip", TRUSTED_ONLY),
    N("x-original-url", TRUSTED_ONLY), N("x-rewrite-url", TRUSTED_ONLY),
    N("x-forwarded-prefix", TRUSTED_ONLY), N("x-forwarded-port", TRUSTED_ONLY),
    N("x-forwarded-server", TRUSTED_ONLY), N("x-forwarded-scheme", TRUSTED_ONLY),
    N("x-original-host", TRUSTED_ONLY), N("x-host", TRUSTED_ONLY),
};
#undef N
#define NAMES ((int)(sizeof(names) / sizeof(names[0])))

#define LONGEST 19  /* x-cluster-client-ip */
/* The names of each length n: by_len[n][0 .. by_len_count[n]] (set at import). */
static const struct name *by_len[LONGEST + 1][NAMES];
static int by_len_count[LONGEST + 1];

/* The kind of a field by its name, compared without regard to case (ASCII, as bytes.lower). */
static int
kind_of(const char *s, Py_ssize_t n)
{
    if (n > LONGEST)
        return ORDINARY;
    char first = s[0];
    if (first >= 'A' && first <= 'Z')
        first += 'a' - 'A';
    for (int i = 0; i < by_len_count[n]; i++) {
        const struct name *e = by_len[n][i];
        if (e->lower[0] != first)
            continue;
        Py_ssize_t j = 1;
        while (j < n) {
            char c = s[j];
            if (c >= 'A' && c <= 'Z')
                c += 'a' - 'A';
            if (c != e->lower[j])
                break;
            j++;
        }
        if (j == n)
            return e->kind;
    }
    return ORDINARY;
}

/* The length of the line a field of this kind is forwarded as (0: not forwarded). */
static Py_ssize_t
line_len(int kind, Py_ssize_t name, Py_ssize_t value, int trusted, int http11)
{
    switch (kind) {
    case ORDINARY:
    case K_COOKIE:
        return name + value + 4;
    case K_LENGTH:
        return 16 + value + 2;  /* "Content-Length: " */
    case K_EXPECT:
        return http11 ? 22 : 0;  /* "Expect: 100-continue\r\n" */
    case TRUSTED_ONLY:
        return trusted ? name + value + 4 : 0;
    default:
        return 0;
    }
}

static PyObject *
classify(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "classify(fields: list, trusted, http11, max_header)");
        return NULL;
    }
    PyObject *fields = args[0];
    const int trusted = PyObject_IsTrue(args[1]);
    const int http11 = PyObject_IsTrue(args[2]);
    if (trusted < 0 || http11 < 0)
        return NULL;
    const Py_ssize_t max_header = PyLong_AsSsize_t(args[3]);
    if (max_header == -1 && PyErr_Occurred())
        return NULL;
    const Py_ssize_t n = PyList_GET_SIZE(fields);
    unsigned char kinds_here[64];
    unsigned char *kinds = kinds_here;
    if (n > (Py_ssize_t)sizeof(kinds_here)) {
        kinds = PyMem_Malloc(n);
        if (kinds == NULL)
            return PyErr_NoMemory();
    }
    PyObject *specials = PyList_New(0);
    PyObject *kept = NULL, *result = NULL;
    if (specials == NULL)
        goto done;
    /* First pass: sizes, kinds, the special fields reported, the length of what is kept. */
    Py_ssize_t total = 0, kept_len = 0, used = n;
    int big = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(fields, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2
                || !PyBytes_Check(PyTuple_GET_ITEM(t, 0))
                || !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
            PyErr_SetString(PyExc_TypeError, "classify: fields are (bytes, bytes)");
            goto done;
        }
        PyObject *name = PyTuple_GET_ITEM(t, 0), *value = PyTuple_GET_ITEM(t, 1);
        const Py_ssize_t nl = PyBytes_GET_SIZE(name), vl = PyBytes_GET_SIZE(value);
        if (nl + vl > max_header) {
            big = 1;  /* refused at this field: the ones after it are not read */
            used = i;
            break;
        }
        total += nl + vl;
        const int kind = kind_of(PyBytes_AS_STRING(name), nl);
        kinds[i] = (unsigned char)kind;
        kept_len += line_len(kind, nl, vl, trusted, http11);
        if (kind != ORDINARY && kind <= SPECIAL_MAX) {
            PyObject *pair = PyTuple_New(2);
            if (pair == NULL)
                goto done;
            PyTuple_SET_ITEM(pair, 0, PyLong_FromLong(kind));  /* (a small int: cached) */
            PyTuple_SET_ITEM(pair, 1, Py_NewRef(value));
            int err = PyList_Append(specials, pair);
            Py_DECREF(pair);
            if (err < 0)
                goto done;
        }
    }
    /* Second pass: the forwarded lines, in the fields' order. */
    kept = PyBytes_FromStringAndSize(NULL, kept_len);
    if (kept == NULL)
        goto done;
    char *w = PyBytes_AS_STRING(kept);
    for (Py_ssize_t i = 0; i < used; i++) {
        PyObject *t = PyList_GET_ITEM(fields, i);
        PyObject *name = PyTuple_GET_ITEM(t, 0), *value = PyTuple_GET_ITEM(t, 1);
        const Py_ssize_t nl = PyBytes_GET_SIZE(name), vl = PyBytes_GET_SIZE(value);
        const int kind = kinds[i];
        if (kind == K_LENGTH) {
            memcpy(w, "Content-Length: ", 16);
            memcpy(w + 16, PyBytes_AS_STRING(value), vl);
            memcpy(w + 16 + vl, "\r\n", 2);
            w += 18 + vl;
        } else if (kind == K_EXPECT) {
            if (http11) {
                memcpy(w, "Expect: 100-continue\r\n", 22);
                w += 22;
            }
        } else if (kind == ORDINARY || kind == K_COOKIE || (kind == TRUSTED_ONLY && trusted)) {
            memcpy(w, PyBytes_AS_STRING(name), nl);
            memcpy(w + nl, ": ", 2);
            memcpy(w + nl + 2, PyBytes_AS_STRING(value), vl);
            memcpy(w + nl + 2 + vl, "\r\n", 2);
            w += nl + vl + 4;
        }
    }
    PyObject *sum = PyLong_FromSsize_t(total);
    if (sum == NULL)
        goto done;
    result = PyTuple_New(4);
    if (result == NULL) {
        Py_DECREF(sum);
        goto done;
    }
    PyTuple_SET_ITEM(result, 0, Py_NewRef(specials));
    PyTuple_SET_ITEM(result, 1, Py_NewRef(kept));
    PyTuple_SET_ITEM(result, 2, sum);
    PyTuple_SET_ITEM(result, 3, Py_NewRef(big ? Py_True : Py_False));
done:
    Py_XDECREF(specials);
    Py_XDECREF(kept);
    if (kinds != kinds_here)
        PyMem_Free(kinds);
    return result;
}

/* The bytes that send a request target to the path checks (request_head._URL_SPECIAL): 1 for
 * "?", "#", "%", "\\", ";"; 2 for "/", when "." or "/" follows it. */
static unsigned char target_special[256];

static PyObject *
plain_target(PyObject *self, PyObject *url)
{
    (void)self;
    if (!PyBytes_Check(url)) {
        PyErr_SetString(PyExc_TypeError, "plain_target(url: bytes)");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(url);
    const Py_ssize_t n = PyBytes_GET_SIZE(url);
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char t = target_special[s[i]];
        if (t == 1 || (t == 2 && i + 1 < n && (s[i + 1] == '.' || s[i + 1] == '/')))
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* The classes of request_head._HOST_RE, by byte: a name's [A-Za-z0-9._-], an IP literal's
 * [0-9A-Fa-f:.], a port's [0-9] (set at import). */
enum { HOST_NAME = 1, HOST_IP = 2, HOST_PORT = 4 };
static unsigned char host_class[256];

/* Whether s[:n] matches request_head._HOST_RE,
 * ^(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?\Z, in one pass: no class above holds
 * the byte that ends it, so nothing is tried twice. */
static int
host_valid(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i, start;
    if (n > 0 && s[0] == '[') {
        i = start = 1;
        while (i < n && (host_class[s[i]] & HOST_IP))
            i++;
        if (i == start || i == n || s[i] != ']')
            return 0;
        i++;
    } else {
        i = start = 0;
        while (i < n && (host_class[s[i]] & HOST_NAME))
            i++;
        if (i == start)
            return 0;
    }
    if (i < n) {
        if (s[i] != ':')
            return 0;
        start = ++i;
        while (i < n && (host_class[s[i]] & HOST_PORT))
            i++;
        if (i < n || i - start > 5)
            return 0;
    }
    return 1;
}

/* request_head.read_host: the value without the ASCII white space around it (bytes.strip()),
 * if that is a valid host, else None. */
static PyObject *
host(PyObject *self, PyObject *value)
{
    (void)self;
    if (!PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "host(value: bytes)");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(value);
    Py_ssize_t a = 0, b = PyBytes_GET_SIZE(value);
    while (a < b && Py_ISSPACE(s[a]))
        a++;
    while (b > a && Py_ISSPACE(s[b - 1]))
        b--;
    if (!host_valid(s + a, b - a))
        Py_RETURN_NONE;
    if (a == 0 && b == PyBytes_GET_SIZE(value))
        return Py_NewRef(value);
    return PyBytes_FromStringAndSize((const char *)s + a, b - a);
}

static PyObject *
concat(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    Py_ssize_t len = 0;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        if (!PyBytes_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "concat(*parts: bytes)");
            return NULL;
        }
        len += PyBytes_GET_SIZE(args[i]);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, len);
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < nargs; i++) {
        const Py_ssize_t k = PyBytes_GET_SIZE(args[i]);
        memcpy(w, PyBytes_AS_STRING(args[i]), k);
        w += k;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"fields", (PyCFunction)(void (*)(void))fields, METH_FASTCALL,
     "fields(buf, pos, k): ([(name, value), ...], http11) of the request head llhttp accepted "
     "at buf[pos:]."},
    {"classify", (PyCFunction)(void (*)(void))classify, METH_FASTCALL,
     "classify(fields, trusted, http11, max_header): (specials, kept, total, too_large), as "
     "request_head.classify reads the fields."},
    {"plain_target", plain_target, METH_O,
     "plain_target(url): whether a request target has nothing the path checks look at."},
    {"host", host, METH_O,
     "host(value): a Host value without the white space around it if it is well-formed, "
     "else None."},
    {"concat", (PyCFunction)(void (*)(void))concat, METH_FASTCALL,
     "concat(*parts): b\"\".join(parts), of bytes only."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "router.http._fields",
    "A request head read in one pass, and checked per byte (see _fields.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__fields(void)
{
    for (const char *c = "?#%\\;"; *c; c++)
        target_special[(unsigned char)*c] = 1;
    target_special['/'] = 2;
    for (int c = 0; c < 256; c++) {
        const int digit = c >= '0' && c <= '9', lower = c | 0x20;
        const int letter = lower >= 'a' && lower <= 'z', hex = lower >= 'a' && lower <= 'f';
        host_class[c] = (unsigned char)(
            (digit || letter || c == '.' || c == '_' || c == '-' ? HOST_NAME : 0)
            | (digit || hex || c == ':' || c == '.' ? HOST_IP : 0) | (digit ? HOST_PORT : 0));
    }
    for (int i = 0; i < NAMES; i++) {
        const Py_ssize_t n = names[i].len;
        by_len[n][by_len_count[n]++] = &names[i];
    }
    return PyModule_Create(&module);
}
