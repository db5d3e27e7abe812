/* A backend's response head, checked and rewritten in one pass: the C version of
 * router.http.response_head.check_response_head (docs/performance.md, "Made").
 *
 * head(buf, flags, set_cookie, own_cookie) reads the head at the start of buf (what the backend
 * has sent so far: the head, maybe a part of it, maybe the body after it) once, byte by byte,
 * up to its empty line, and
 *   - refuses what llhttp refuses, with llhttp's reason (the response parser the router used
 *     before, with no lenient flag): the status line's form and version, three digits of
 *     status, token characters in names, no white space before the colon or at the start of a
 *     line, no control character in values, Content-Length's digits, duplicates and overflow,
 *     Content-Length beside Transfer-Encoding;
 *   - reads the status, the Connection options (keep-alive: RFC 9112 9.3) and what the Python
 *     rewrite reads (the hop-by-hop fields, Content-Length, a chunked Transfer-Encoding);
 *   - and, as router.http.response_head.read_response_head does, decides the framing and
 *     builds the client's head in one allocation.
 * It returns (status, head, body, length, rechunk, close, reusable, end, taken), end where the
 * head's empty line starts in buf (what bytes.find(b"\r\n\r\n") says: the scan meets it there,
 * since every CR it lets through ends a line), taken the bytes of a short Content-Length body
 * that follow the head in buf, copied into head after the client's head (WITH_BODY_MAX). It
 * raises ValueError(reason) for a head the router refuses, and returns None for a buffer with
 * no whole head yet (whatever it holds: the caller reads on, and llhttp checks the pieces as
 * they come) and for a head it leaves to the Python code, which checks it with llhttp and
 * rewrites it: whatever is rare and intricate (a status line not "HTTP/", 101, a
 * Transfer-Encoding other than a bare "chunked", a Connection field other than a bare "close"
 * or "keep-alive", Proxy-Connection, the backend's Set-Cookie on a sticky app). Its answers
 * are checked against llhttp's and the Python code's, byte for byte, by
 * tests/unit/test_response_head_c.py. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* flags (the same bits as router.http.response_head's FLAG_*) */
#define HEAD_REQUEST 1
#define CLIENT_HTTP11 2
#define CLIENT_KEEP_ALIVE 4
#define UPGRADE_REQUESTED 8
#define REQUEST_DONE 16
#define ACCEPTING 32

/* router.http.framing */
#define BODY_NONE 0
#define BODY_LENGTH 1
#define BODY_CHUNKED 2
#define BODY_EOF 3

#define MAX_CUTS 16

/* A Content-Length body up to this long that follows its head in buf is copied in after the
 * client's head (router.dataplane.upstream._VIEW_MIN: a body that short read with its head is
 * copied out of the read anyway), so that the two leave in one write: uvloop's writelines
 * makes a write context per call, and joining them later is another copy and object. */
#define WITH_BODY_MAX 4096

/* llhttp's parser flags that matter here */
#define F_CONNECTION_KEEP_ALIVE 1
#define F_CONNECTION_CLOSE 2
#define F_CONTENT_LENGTH 32
#define F_TRANSFER_ENCODING 512

/* tchar (RFC 9110 5.6.2), as llhttp's TOKEN */
static unsigned char is_token[256];
/* HTAB, SP, VCHAR, obs-text: what llhttp lets through in a field value */
static unsigned char is_value[256];

/* The byte at i of buf; NUL past its end, which every check refuses but the reason phrase's
 * (whose loop stops there). The scan reads at most 3 bytes past the CR where a head's empty
 * line starts (and never past the head), so that a whole head in buf is read as it would be
 * alone; a refusal or a stop past the end of buf is for a head not whole yet (refuse). */
#define AT(i) ((i) < n ? s[i] : 0)

/* Which field a name is (the names read_response_head treats apart). */
enum { K_OTHER, K_HOP, K_CONNECTION, K_PROXY_CONNECTION, K_TRANSFER_ENCODING, K_UPGRADE,
       K_CONTENT_LENGTH, K_SET_COOKIE };

static int
same(const unsigned char *p, const char *lower, Py_ssize_t size)
{
    for (Py_ssize_t j = 0; j < size; j++)
        if ((p[j] | 0x20) != (unsigned char)lower[j])
            return 0;
    return 1;
}

static int
kind_of(const unsigned char *p, Py_ssize_t size)
{
    switch (p[0] | 0x20) {
    case 'c':
        if (size == 14 && same(p, "content-length", 14)) return K_CONTENT_LENGTH;
        if (size == 10 && same(p, "connection", 10)) return K_CONNECTION;
        break;
    case 't':
        if (size == 17 && same(p, "transfer-encoding", 17)) return K_TRANSFER_ENCODING;
        if ((size == 2 && same(p, "te", 2)) || (size == 7 && same(p, "trailer", 7)))
            return K_HOP;
        break;
    case 'k':
        if (size == 10 && same(p, "keep-alive", 10)) return K_HOP;
        break;
    case 'p':
        if (size == 16 && same(p, "proxy-connection", 16)) return K_PROXY_CONNECTION;
        break;
    case 'u':
        if (size == 7 && same(p, "upgrade", 7)) return K_UPGRADE;
        break;
    case 's':
        if (size == 10 && same(p, "set-cookie", 10)) return K_SET_COOKIE;
        break;
    }
    return K_OTHER;
}

/* Whether buf holds a head's end: "\r\n\r\n". */
static int
whole(const unsigned char *s, Py_ssize_t n)
{
    if (n < 4)
        return 0;
    const unsigned char *p = s, *stop = s + n - 3;
    while (p < stop && (p = memchr(p, '\r', stop - p)) != NULL) {
        if (p[1] == '\n' && p[2] == '\r' && p[3] == '\n')
            return 1;
        p++;
    }
    return 0;
}

/* llhttp's refusal of the head in buf, if it is whole; else None (not whole yet). */
static PyObject *
refuse(const unsigned char *s, Py_ssize_t n, const char *reason)
{
    if (!whole(s, n))
        Py_RETURN_NONE;
    PyErr_Format(PyExc_ValueError, "malformed response: %s", reason);
    return NULL;
}

static PyObject *
head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1])
            || !PyBytes_CheckExact(args[2]) || !PyBytes_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "head(buf: bytes, flags: int, set_cookie: bytes, "
                        "own_cookie: bytes)");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t buf_len = n;
    long flags = PyLong_AsLong(args[1]);
    const char *set_cookie = PyBytes_AS_STRING(args[2]);
    Py_ssize_t set_cookie_len = PyBytes_GET_SIZE(args[2]);
    int sticky = PyBytes_GET_SIZE(args[3]) > 0;

    /* The status line: "HTTP/" (other protocols and leading empty lines: left to llhttp). */
    if (n < 5 || memcmp(s, "HTTP/", 5) != 0)
        Py_RETURN_NONE;
    unsigned char major = AT(5), minor;
    if (major < '0' || major > '9')
        return refuse(s, n, "Invalid major version");
    if (AT(6) != '.')
        return refuse(s, n, "Expected dot");
    minor = AT(7);
    if (minor < '0' || minor > '9')
        return refuse(s, n, "Invalid minor version");
    major -= '0';
    minor -= '0';
    if (!((major == 0 && minor == 9) || (major == 1 && minor <= 1) || (major == 2 && minor == 0)))
        return refuse(s, n, "Invalid HTTP version");
    if (AT(8) != ' ')
        return refuse(s, n, "Expected space after version");
    int status = 0;
    for (Py_ssize_t i = 9; i < 12; i++) {
        unsigned char d = AT(i);
        if (d < '0' || d > '9')
            return refuse(s, n, "Invalid status code");
        status = status * 10 + (d - '0');
    }
    if (status == 101)
        Py_RETURN_NONE;  /* an upgrade: rare, and the Python code's */
    int ctl = 0;  /* a control character in the reason phrase */
    Py_ssize_t i = 12;
    unsigned char c = AT(i);
    if (c == ' ') {
        for (i++;; i++) {
            if (i >= n)
                Py_RETURN_NONE;  /* not whole yet */
            c = AT(i);
            if (c == '\r' || c == '\n')
                break;
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                ctl = 1;
        }
        if (c == '\n')
            return refuse(s, n, "Missing expected CR after response line");
    } else if (c != '\r') {
        return refuse(s, n, "Invalid response status");
    }
    if (AT(i + 1) != '\n')
        return refuse(s, n, "Expected LF after CR");
    i += 2;
    if (AT(i) == ' ')
        return refuse(s, n, "Unexpected space after start line");

    /* The fields, one line at a time; i at the start of each. */
    int llflags = 0;
    uint64_t length = 0;
    int has_length = 0, chunked = 0;
    Py_ssize_t cuts[MAX_CUTS][2];
    int ncuts = 0;
    Py_ssize_t cl_cut = -1, cl_cut_end = -1;
    for (;;) {
        c = AT(i);
        if (c == '\r') {
            if (AT(i + 1) != '\n')
                return refuse(s, n, "Expected LF after headers");
            break;
        }
        if (c == '\n')
            return refuse(s, n, "Invalid header field char");
        if (c == ':')
            return refuse(s, n, "Invalid header token");
        Py_ssize_t name = i;
        while (i < n && is_token[s[i]])
            i++;
        int kind = i > name ? kind_of(s + name, i - name) : K_OTHER;
        c = AT(i);
        if (c != ':') {
            if (c == ' ' && (kind == K_CONTENT_LENGTH || kind == K_CONNECTION
                             || kind == K_PROXY_CONNECTION || kind == K_TRANSFER_ENCODING
                             || kind == K_UPGRADE))
                return refuse(s, n, "Invalid header field char");
            return refuse(s, n, "Invalid header token");
        }
        if (kind == K_PROXY_CONNECTION || (kind == K_SET_COOKIE && sticky))
            Py_RETURN_NONE;
        if (kind == K_TRANSFER_ENCODING && (llflags & F_CONTENT_LENGTH))
            return refuse(s, n, "Transfer-Encoding can't be present with Content-Length");
        if (kind == K_CONTENT_LENGTH && (llflags & F_TRANSFER_ENCODING))
            return refuse(s, n, "Content-Length can't be present with Transfer-Encoding");
        i++;
        while ((c = AT(i)) == ' ' || c == '\t')
            i++;
        Py_ssize_t value = i, end;
        if (c == '\r' || c == '\n') {  /* an empty value */
            if (c == '\n' || AT(i + 1) != '\n')
                return refuse(s, n, c == '\n' ? "Invalid header value char"
                                               : "Expected LF after CR");
            c = AT(i + 2);
            if (c == ' ' || c == '\t')
                return refuse(s, n, "Invalid header value char");
            if (kind == K_CONTENT_LENGTH)
                return refuse(s, n, "Empty Content-Length");
            if (kind != K_OTHER && kind != K_SET_COOKIE)
                Py_RETURN_NONE;  /* an empty Connection, Transfer-Encoding, ...: Python's */
            i += 2;
            continue;
        }
        if (kind == K_CONTENT_LENGTH) {
            if (llflags & F_CONTENT_LENGTH)
                return refuse(s, n, "Duplicate Content-Length");
            uint64_t v = 0;
            while ((c = AT(i)) >= '0' && c <= '9') {
                unsigned d = c - '0';
                if (v > (UINT64_MAX - d) / 10)
                    return refuse(s, n, "Content-Length overflow");
                v = v * 10 + d;
                i++;
            }
            while ((c = AT(i)) == ' ' || c == '\t')
                i++;
            if (c != '\r' && c != '\n')
                return refuse(s, n, "Invalid character in Content-Length");
            llflags |= F_CONTENT_LENGTH;
            length = v;
            has_length = 1;
        } else {
            while (i < n && is_value[s[i]])
                i++;
            c = AT(i);
            if (c != '\r' && c != '\n')
                return refuse(s, n, "Invalid header value char");
        }
        if (c == '\n')
            return refuse(s, n, "Missing expected CR after header value");
        if (AT(i + 1) != '\n')
            return refuse(s, n, "Missing expected LF after header value");
        end = i;
        c = AT(i + 2);
        if (c == ' ' || c == '\t')
            return refuse(s, n, "Unexpected whitespace after header value");
        /* name - 2: the CRLF before the line, as the cuts of read_response_head. */
        switch (kind) {
        case K_CONTENT_LENGTH:
            cl_cut = name - 2;
            cl_cut_end = end;
            break;
        case K_TRANSFER_ENCODING:
            if (chunked || end - value != 7 || !same(s + value, "chunked", 7))
                Py_RETURN_NONE;
            chunked = 1;
            llflags |= F_TRANSFER_ENCODING;
            goto cut;
        case K_CONNECTION:
            if (end - value == 5 && same(s + value, "close", 5))
                llflags |= F_CONNECTION_CLOSE;
            else if (end - value == 10 && same(s + value, "keep-alive", 10))
                llflags |= F_CONNECTION_KEEP_ALIVE;
            else
                Py_RETURN_NONE;
            goto cut;
        case K_HOP:
        case K_UPGRADE:
        cut:
            if (ncuts == MAX_CUTS)
                Py_RETURN_NONE;
            cuts[ncuts][0] = name - 2;
            cuts[ncuts][1] = end;
            ncuts++;
            break;
        }
        i += 2;
    }
    /* The head ends at the CRLF before its empty line (i); from here on it is raw, as the
     * Python code reads it. */
    Py_ssize_t end = i - 2;
    n = end;

    /* Whether the backend keeps the connection (RFC 9112 9.3): HTTP/1.1 (or later) unless
     * "close" is among the Connection options, HTTP/1.0 only with "keep-alive". Not llhttp's
     * should_keep_alive(): read after a response complete at its head (204, 304, 1xx, a
     * Content-Length of 0) it works from flags llhttp has cleared by then, and tells keep-alive
     * for a 204 with "close" and close for a 200 with "Content-Length: 0". */
    int http11 = major > 1 || (major == 1 && minor > 0);
    int keep_alive = !(llflags & F_CONNECTION_CLOSE)
        && (http11 || (llflags & F_CONNECTION_KEEP_ALIVE));

    if (status < 100) {
        PyErr_SetString(PyExc_ValueError, "status code below 100");
        return NULL;
    }
    if (ctl) {
        PyErr_SetString(PyExc_ValueError, "control character in the status line");
        return NULL;
    }
    if (cl_cut >= 0 && (status < 200 || status == 204 || status == 304)) {
        if (ncuts == MAX_CUTS)
            Py_RETURN_NONE;
        cuts[ncuts][0] = cl_cut;
        cuts[ncuts][1] = cl_cut_end;
        ncuts++;
    }

    int body = BODY_NONE, rechunk = 0, close = 0, reusable = 1, te_chunked_out = 0;
    int client_http11 = (flags & CLIENT_HTTP11) != 0;
    int request_done = (flags & REQUEST_DONE) != 0;
    const char *extra_conn = NULL;
    int add_cookie = 0;
    if (status < 200) {  /* interim (not 101: above) */
        if (!client_http11)
            return Py_BuildValue("(iyiiOOOnn)", status, "", BODY_NONE, 0, Py_False, Py_False,
                                 Py_True, end, (Py_ssize_t)0);
        reusable = keep_alive;
    } else {
        close = !(flags & CLIENT_KEEP_ALIVE) || !request_done || !(flags & ACCEPTING)
            || (flags & UPGRADE_REQUESTED);
        if (status == 204 || status == 304 || (flags & HEAD_REQUEST)) {
            /* no body */
        } else if (chunked) {
            body = BODY_CHUNKED;
            if (!client_http11)
                close = 1;
            else
                rechunk = te_chunked_out = 1;
        } else if (has_length) {
            if (length) {
                body = BODY_LENGTH;
            }
        } else {
            body = BODY_EOF;
            if (!client_http11)
                close = 1;
            else
                rechunk = te_chunked_out = 1;
        }
        reusable = keep_alive && body != BODY_EOF && request_done && (!chunked || http11);
        if (close)
            extra_conn = "\r\nConnection: close";
        else if (!client_http11)
            extra_conn = "\r\nConnection: keep-alive";
        add_cookie = set_cookie_len > 0;
    }

    /* The client's head: "HTTP/1.1", the rest of raw less the cuts, the added fields. */
    for (int a = 1; a < ncuts; a++) {  /* in order (the Content-Length cut comes last) */
        Py_ssize_t s0 = cuts[a][0], s1 = cuts[a][1];
        int b = a - 1;
        while (b >= 0 && cuts[b][0] > s0) {
            cuts[b + 1][0] = cuts[b][0];
            cuts[b + 1][1] = cuts[b][1];
            b--;
        }
        cuts[b + 1][0] = s0;
        cuts[b + 1][1] = s1;
    }
    static const char TE_CHUNKED[] = "\r\nTransfer-Encoding: chunked";
    Py_ssize_t size = 8 + (n - 8) + 4;
    for (int a = 0; a < ncuts; a++)
        size -= cuts[a][1] - cuts[a][0];
    if (te_chunked_out)
        size += sizeof(TE_CHUNKED) - 1;
    Py_ssize_t conn_len = extra_conn ? (Py_ssize_t)strlen(extra_conn) : 0;
    size += conn_len;
    if (add_cookie)
        size += 2 + set_cookie_len;
    Py_ssize_t taken = 0;  /* body bytes after the head (WITH_BODY_MAX) */
    if (body == BODY_LENGTH) {
        uint64_t avail = (uint64_t)(buf_len - end - 4);
        if ((avail < length ? avail : length) <= WITH_BODY_MAX)
            taken = (Py_ssize_t)(avail < length ? avail : length);
    }
    size += taken;
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    memcpy(w, "HTTP/1.1", 8);
    w += 8;
    Py_ssize_t pos = 8;
    for (int a = 0; a < ncuts; a++) {
        memcpy(w, s + pos, cuts[a][0] - pos);
        w += cuts[a][0] - pos;
        pos = cuts[a][1];
    }
    memcpy(w, s + pos, n - pos);
    w += n - pos;
    if (te_chunked_out) {
        memcpy(w, TE_CHUNKED, sizeof(TE_CHUNKED) - 1);
        w += sizeof(TE_CHUNKED) - 1;
    }
    if (conn_len) {
        memcpy(w, extra_conn, conn_len);
        w += conn_len;
    }
    if (add_cookie) {
        memcpy(w, "\r\n", 2);
        memcpy(w + 2, set_cookie, set_cookie_len);
        w += 2 + set_cookie_len;
    }
    memcpy(w, "\r\n\r\n", 4);
    memcpy(w + 4, s + end + 4, taken);
    PyObject *len = PyLong_FromUnsignedLongLong(body == BODY_LENGTH ? length : 0);
    if (len == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    PyObject *t = PyTuple_New(9);
    if (t == NULL) {
        Py_DECREF(out);
        Py_DECREF(len);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, PyLong_FromLong(status));
    PyTuple_SET_ITEM(t, 1, out);
    PyTuple_SET_ITEM(t, 2, PyLong_FromLong(body));
    PyTuple_SET_ITEM(t, 3, len);
    PyTuple_SET_ITEM(t, 4, Py_NewRef(rechunk ? Py_True : Py_False));
    PyTuple_SET_ITEM(t, 5, Py_NewRef(close ? Py_True : Py_False));
    PyTuple_SET_ITEM(t, 6, Py_NewRef(reusable ? Py_True : Py_False));
    PyTuple_SET_ITEM(t, 7, PyLong_FromSsize_t(end));
    PyTuple_SET_ITEM(t, 8, PyLong_FromSsize_t(taken));
    if (PyErr_Occurred()) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

static PyMethodDef methods[] = {
    {"head", (PyCFunction)(void (*)(void))head, METH_FASTCALL,
     "head(buf, flags, set_cookie, own_cookie): (status, head, body, length, rechunk, close, "
     "reusable, end, taken), None for no whole head or one left to the Python code, or "
     "ValueError(reason)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "router.http._head",
    "A backend's response head checked and rewritten in one pass (see _head.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__head(void)
{
    const char *tchar = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        is_token[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c && strchr(tchar, c) != NULL);
        is_value[c] = c == '\t' || (c >= 0x20 && c != 0x7f);
    }
    return PyModule_Create(&module);
}
