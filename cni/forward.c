/* podbgp-cni-forward: podbgp-cni and podbgp-ipam as one small compiled program.
 *
 * Owned by cni/. Built by `make deps` (python -m cni.forward --build) when a C
 * compiler is present; see docs/cni.md, "Launchers". A CNI plugin is a new
 * process per pod event; with the node's agent (cni/agent.py) listening, all
 * that process does is hand the agent its environment and stdin and print the
 * answer. This program does exactly what cni.fast.launch does on that path,
 * without starting an interpreter:
 *
 *   - which plugin: the basename of argv[0] ("...-ipam": podbgp-ipam, else
 *     podbgp-cni), as Calico's one binary serves calico and calico-ipam
 *     (projectcalico/calico cni-plugin/cmd/calico/calico.go);
 *   - the agent's socket: a top-level "agent_socket" string of the network
 *     configuration, else PODBGP_CNI_SOCKET, else the default (cni.fast.socket_from);
 *   - the request: byte for byte cni.fast.request (4-byte big-endian length,
 *     then {"plugin": ..., "env": {...}, "stdin": ...} in ASCII JSON);
 *   - the reply's stdout, then stderr, then its rc as the exit status.
 *
 * Anything else is left to the Python launcher beside this program
 * (<dir>/<name>-python), exec'd with the same arguments and the same stdin:
 * CNI_COMMAND unset/empty or VERSION, `podbgp-cni agent|--version|--help|-h`,
 * no agent listening, a configuration naming "agent_socket" that this parser
 * does not read exactly as Python's json would (not JSON, NaN, nesting deeper
 * than MAX_DEPTH, a NUL or a lone surrogate in the path), a path too long for
 * AF_UNIX. When the agent was reached but failed mid-request, the launcher is
 * exec'd with PODBGP_CNI_FORWARD_FAILED set to the reason and writes the same
 * code-11 ("try again later") error object as the Python path
 * (cni.shim.agent_failed): one implementation of that object.
 *
 * libc only; cc -Wall -Wextra -O2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_AGENT_SOCKET "/var/run/podbgp-cni/agent.sock" /* cni.fast */
#define MAX_MESSAGE (16u << 20)                               /* cni.fast.MAX_MESSAGE */
#define AGENT_TIMEOUT 300                                     /* cni.fast.call */
#define CONNECT_TIMEOUT 2                                     /* cni.fast.call */
#define FAILED_ENV "PODBGP_CNI_FORWARD_FAILED"                /* cni.fast.FORWARD_FAILED */
#define MAX_DEPTH 500 /* below CPython's recursion limit: deeper goes to Python */

extern char **environ;

struct buf {
    char *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2 + 4096;
        char *p = realloc(b->p, cap);
        if (!p) {
            fputs("podbgp-cni-forward: out of memory\n", stderr);
            exit(1);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_u(struct buf *b, unsigned cp)
{
    static const char hex[] = "0123456789abcdef";
    char e[6] = {'\\', 'u', hex[cp >> 12 & 15], hex[cp >> 8 & 15], hex[cp >> 4 & 15],
                 hex[cp & 15]};
    put(b, e, 6);
}

/* The length of the well-formed UTF-8 sequence at s (Unicode 15, table 3-7, as
   CPython's decoder checks it) and its code point; 0 when s[0] does not start one. */
static size_t utf8(const unsigned char *s, size_t n, unsigned *cp)
{
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xbf;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        *cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        *cp = c & 0x0f;
        if (c == 0xe0)
            lo = 0xa0;
        if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        *cp = c & 0x07;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if (i > 1 && (s[i] < 0x80 || s[i] > 0xbf))
            return 0;
        *cp = *cp << 6 | (s[i] & 0x3f);
    }
    return len;
}

/* json.encoder.encode_basestring_ascii of the text Python decodes from these
   bytes with "surrogateescape": a byte outside well-formed UTF-8 is \udcXX. */
static void put_str(struct buf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned cp;
        size_t len = utf8(u + i, n - i, &cp);
        if (len == 0) {
            put_u(b, 0xdc00 | u[i]);
            i++;
            continue;
        }
        i += len;
        if (cp == '"' || cp == '\\') {
            char e[2] = {'\\', (char)cp};
            put(b, e, 2);
        } else if (cp == '\n') {
            put(b, "\\n", 2);
        } else if (cp == '\r') {
            put(b, "\\r", 2);
        } else if (cp == '\t') {
            put(b, "\\t", 2);
        } else if (cp == '\b') {
            put(b, "\\b", 2);
        } else if (cp == '\f') {
            put(b, "\\f", 2);
        } else if (cp >= 0x20 && cp < 0x7f) {
            char c = (char)cp;
            put(b, &c, 1);
        } else if (cp < 0x10000) {
            put_u(b, cp);
        } else {
            cp -= 0x10000;
            put_u(b, 0xd800 | (cp >> 10));
            put_u(b, 0xdc00 | (cp & 0x3ff));
        }
    }
    put(b, "\"", 1);
}

/* ---------------------------------------------------------------- JSON reading
   A strict reader of one JSON document (RFC 8259, which Python's json reads too,
   plus nothing: NaN/Infinity, which Python accepts, fail here and so go to Python). */

struct json {
    const char *p, *end;
    int depth;
};

static void skip_ws(struct json *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int hex4(const char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        *v <<= 4;
        if (c >= '0' && c <= '9')
            *v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            *v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            *v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    return 0;
}

static void put_utf8(struct buf *b, unsigned cp)
{
    unsigned char o[4];
    size_t n;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        o[0] = (unsigned char)(0xf0 | cp >> 18);
        o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[3] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    put(b, o, n);
}

/* A string at j->p (the opening quote). Its bytes go to ``out`` (if not NULL) as
   Python would write the decoded str with "surrogateescape": a lone \udc80-\udcff is
   that byte; *odd is set for any other lone surrogate or a NUL. -1: not a string. */
static int read_str(struct json *j, struct buf *out, int *odd)
{
    if (j->p >= j->end || *j->p != '"')
        return -1;
    j->p++;
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p;
        if (c == '"') {
            j->p++;
            return 0;
        }
        if (c < 0x20)
            return -1; /* strict: control characters must be escaped */
        if (c != '\\') {
            const char *s = j->p;
            while (j->p < j->end && *j->p != '"' && *j->p != '\\' &&
                   (unsigned char)*j->p >= 0x20)
                j->p++;
            if (out)
                put(out, s, (size_t)(j->p - s));
            continue;
        }
        if (j->end - j->p < 2)
            return -1;
        char e = j->p[1];
        j->p += 2;
        unsigned cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (j->end - j->p < 4 || hex4(j->p, &cp))
                return -1;
            j->p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && j->end - j->p >= 6 && j->p[0] == '\\' &&
                j->p[1] == 'u') {
                unsigned lo;
                if (hex4(j->p + 2, &lo))
                    return -1;
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    j->p += 6;
                }
            }
            break;
        default:
            return -1;
        }
        if (cp >= 0xdc80 && cp <= 0xdcff) {
            if (out) {
                unsigned char byte = (unsigned char)(cp & 0xff);
                put(out, &byte, 1);
            }
            continue;
        }
        if (cp == 0 || (cp >= 0xd800 && cp < 0xe000))
            *odd = 1;
        if (out)
            put_utf8(out, cp);
    }
    return -1;
}

static int read_value(struct json *j);

static int read_number(struct json *j)
{
    const char *p = j->p;
    if (p < j->end && *p == '-')
        p++;
    if (p >= j->end)
        return -1;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < j->end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return -1;
    }
    if (p < j->end && *p == '.') {
        p++;
        if (p >= j->end || *p < '0' || *p > '9')
            return -1;
        while (p < j->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < j->end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < j->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= j->end || *p < '0' || *p > '9')
            return -1;
        while (p < j->end && *p >= '0' && *p <= '9')
            p++;
    }
    j->p = p;
    return 0;
}

static int literal(struct json *j, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n))
        return -1;
    j->p += n;
    return 0;
}

/* An object's members: for each, on_member(key, value start) is called at the top
   level only (depth 1), and the value is read. */
typedef int (*member_fn)(void *ctx, const struct buf *key, struct json *j);

static int read_object(struct json *j, member_fn on_member, void *ctx)
{
    struct buf key = {0};
    int odd = 0, rc = -1;
    j->p++; /* { */
    skip_ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return 0;
    }
    for (;;) {
        key.n = 0;
        skip_ws(j);
        if (read_str(j, &key, &odd))
            break;
        skip_ws(j);
        if (j->p >= j->end || *j->p != ':')
            break;
        j->p++;
        skip_ws(j);
        if (on_member ? on_member(ctx, &key, j) : read_value(j))
            break;
        skip_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == '}') {
            j->p++;
            rc = 0;
        }
        break;
    }
    free(key.p);
    return rc;
}

static int read_value(struct json *j)
{
    int odd = 0, rc;
    if (j->p >= j->end)
        return -1;
    if (++j->depth > MAX_DEPTH)
        return -1;
    switch (*j->p) {
    case '{':
        rc = read_object(j, NULL, NULL);
        break;
    case '[':
        j->p++;
        skip_ws(j);
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            rc = 0;
            break;
        }
        for (rc = -1;;) {
            skip_ws(j);
            if (read_value(j))
                break;
            skip_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == ']') {
                j->p++;
                rc = 0;
            }
            break;
        }
        break;
    case '"':
        rc = read_str(j, NULL, &odd);
        break;
    case 't':
        rc = literal(j, "true");
        break;
    case 'f':
        rc = literal(j, "false");
        break;
    case 'n':
        rc = literal(j, "null");
        break;
    default:
        rc = read_number(j);
    }
    j->depth--;
    return rc;
}

/* The top-level object of a whole document (only whitespace around it).
   1: an object, members passed to on_member; 0: valid JSON but not an object;
   -2: not JSON; -3: JSON followed by more ("extra data"). */
static int read_document(const char *s, size_t n, member_fn on_member, void *ctx)
{
    struct json j = {s, s + n, 0};
    int object;
    skip_ws(&j);
    object = j.p < j.end && *j.p == '{';
    if (object) {
        j.depth = 1;
        if (read_object(&j, on_member, ctx))
            return -2;
    } else if (read_value(&j)) {
        return -2;
    }
    skip_ws(&j);
    if (j.p != j.end)
        return -3;
    return object;
}

/* ---------------------------------------------------------------- the config */

struct conf {
    struct buf path;
    int is_str, odd;
};

static int conf_member(void *ctx, const struct buf *key, struct json *j)
{
    struct conf *c = ctx;
    if (key->n == 12 && !memcmp(key->p, "agent_socket", 12)) { /* the last one wins */
        c->path.n = 0;
        c->odd = 0;
        c->is_str = j->p < j->end && *j->p == '"';
        if (c->is_str)
            return read_str(j, &c->path, &c->odd);
    }
    return read_value(j);
}

/* ---------------------------------------------------------------- the reply */

struct reply {
    struct buf out, err;
    int has_rc, rc_int, odd;
    long long rc;
    int out_kind, err_kind; /* 0 absent, 1 string, 2 something else */
};

static int reply_member(void *ctx, const struct buf *key, struct json *j)
{
    struct reply *r = ctx;
    struct buf *dst = NULL;
    int *kind = NULL;
    if (key->n == 2 && !memcmp(key->p, "rc", 2)) {
        const char *s = j->p;
        r->has_rc = 1;
        if (read_value(j))
            return -1;
        /* an int as Python's json reads it: no fraction, no exponent */
        r->rc_int = 1;
        for (const char *p = s; p < j->p; p++)
            if (!((*p >= '0' && *p <= '9') || (p == s && *p == '-')))
                r->rc_int = 0;
        if (r->rc_int) {
            errno = 0;
            r->rc = strtoll(s, NULL, 10);
            if (errno) /* beyond 64 bits: the low byte is still the exit status */
                r->rc = 1;
        }
        return 0;
    }
    if (key->n == 6 && !memcmp(key->p, "stdout", 6)) {
        dst = &r->out;
        kind = &r->out_kind;
    } else if (key->n == 6 && !memcmp(key->p, "stderr", 6)) {
        dst = &r->err;
        kind = &r->err_kind;
    }
    if (!dst)
        return read_value(j);
    dst->n = 0;
    if (j->p < j->end && *j->p == '"') {
        *kind = 1;
        return read_str(j, dst, &r->odd);
    }
    *kind = 2;
    return read_value(j);
}

/* ---------------------------------------------------------------- I/O */

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* 0, or the reason as Python's str() of the exception would say it */
static const char *recv_exact(int s, char *p, size_t n, char *why, size_t whylen)
{
    while (n) {
        ssize_t r = recv(s, p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return "peer closed the connection";
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return "timed out";
            snprintf(why, whylen, "[Errno %d] %s", errno, strerror(errno));
            return why;
        }
        p += r;
        n -= (size_t)r;
    }
    return NULL;
}

static char *launcher; /* <dir>/<name>-python */
static char **args;

/* Hand the call to the Python launcher, with ``in`` (what was read) as its stdin. */
static void python(const struct buf *in, int read_stdin)
{
    if (read_stdin) {
        int fd = memfd_create("podbgp-cni-stdin", 0);
        if (fd >= 0 && write_all(fd, in->p ? in->p : "", in->n) == 0 &&
            lseek(fd, 0, SEEK_SET) == 0) {
            dup2(fd, 0);
        } else {
            int pp[2];
            if (pipe(pp) == 0) {
                pid_t pid = fork();
                if (pid == 0) {
                    close(pp[0]);
                    write_all(pp[1], in->p ? in->p : "", in->n);
                    _exit(0);
                }
                dup2(pp[0], 0);
                close(pp[0]);
                close(pp[1]);
            }
        }
        if (fd > 0)
            close(fd);
    }
    args[0] = launcher;
    execv(launcher, args);
    /* Nothing can run the plugin: say so as a CNI error (SPEC.md "Error"). */
    struct buf b = {0};
    char msg[PATH_MAX + 128];
    snprintf(msg, sizeof msg, "podbgp-cni-forward: cannot run %s: %s", launcher,
             strerror(errno));
    puts_(&b, "{\"cniVersion\": \"1.1.0\", \"code\": 999, \"msg\": ");
    put_str(&b, msg, strlen(msg));
    puts_(&b, "}");
    write_all(1, b.p, b.n);
    fprintf(stderr, "%s\n", msg);
    exit(1);
}

static void failed(const struct buf *in, const char *path, const char *why)
{
    struct buf msg = {0};
    puts_(&msg, "the CNI agent at ");
    puts_(&msg, path);
    puts_(&msg, " failed: ");
    puts_(&msg, why);
    setenv(FAILED_ENV, msg.p, 1);
    python(in, 1);
}

static int special(const char *arg)
{
    return !strcmp(arg, "agent") || !strcmp(arg, "--version") || !strcmp(arg, "--help") ||
           !strcmp(arg, "-h");
}

int main(int argc, char **argv)
{
    struct buf in = {0}, req = {0};
    const char *self = argc > 0 && argv[0] ? argv[0] : "podbgp-cni";
    const char *base = strrchr(self, '/') ? strrchr(self, '/') + 1 : self;
    size_t blen = strlen(base);
    const char *plugin = blen >= 5 && !strcmp(base + blen - 5, "-ipam") ? "ipam" : "cni";
    char exe[PATH_MAX];

    if (!strchr(self, '/')) { /* run by name from PATH: find this file */
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        exe[n > 0 ? n : 0] = 0;
        char *slash = strrchr(exe, '/');
        if (slash)
            slash[1] = 0;
    } else {
        snprintf(exe, sizeof exe, "%.*s", (int)(base - self), self);
    }
    launcher = malloc(strlen(exe) + blen + 8);
    if (!launcher)
        return 1;
    sprintf(launcher, "%s%s-python", exe, base);
    args = argv;
    if (argc < 1)
        args = (char *[]){NULL, NULL};

    const char *cmd = getenv("CNI_COMMAND");
    if (!cmd || !*cmd || !strcmp(cmd, "VERSION") ||
        (!strcmp(plugin, "cni") && argc > 1 && special(argv[1])))
        python(&in, 0);

    if (!isatty(0)) {
        char chunk[1 << 16];
        for (;;) {
            ssize_t r = read(0, chunk, sizeof chunk);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                python(&in, in.n > 0); /* Python meets the same error */
            if (r <= 0)
                break;
            put(&in, chunk, (size_t)r);
        }
    }

    /* cni.fast.socket_from */
    const char *path = NULL;
    struct conf conf = {0};
    if (in.n && memmem(in.p, in.n, "\"agent_socket\"", 14)) {
        int doc = read_document(in.p, in.n, conf_member, &conf);
        if (doc < 0 || conf.odd)
            python(&in, 1);
        if (doc == 1 && conf.is_str && conf.path.n)
            path = conf.path.p;
    }
    if (!path)
        path = getenv("PODBGP_CNI_SOCKET");
    if (!path || !*path)
        path = DEFAULT_AGENT_SOCKET;

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t plen = strlen(path);
    if (plen >= sizeof addr.sun_path || (path == conf.path.p && plen != conf.path.n))
        python(&in, 1);
    memcpy(addr.sun_path, path, plen);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = CONNECT_TIMEOUT}; /* a unix connect waits up to SO_SNDTIMEO */
    if (s >= 0)
        setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (s < 0 || connect(s, (struct sockaddr *)&addr,
                         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen)) < 0)
        python(&in, 1); /* no agent: the launcher finds none either and runs the plugin */
    tv.tv_sec = AGENT_TIMEOUT;
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    /* cni.fast.request: the environment as Python's os.environ has it (entries
       without "=" skipped, the first of a repeated name kept) */
    puts_(&req, "XXXX{\"plugin\": \"");
    puts_(&req, plugin);
    puts_(&req, "\", \"env\": {");
    int first = 1;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        size_t klen = eq ? (size_t)(eq - *e) : 0;
        int seen = !eq;
        for (char **f = environ; !seen && f < e; f++)
            seen = !strncmp(*f, *e, klen + 1);
        if (seen)
            continue;
        if (!first)
            puts_(&req, ", ");
        first = 0;
        put_str(&req, *e, klen);
        puts_(&req, ": ");
        put_str(&req, eq + 1, strlen(eq + 1));
    }
    puts_(&req, "}, \"stdin\": ");
    put_str(&req, in.p ? in.p : "", in.n);
    puts_(&req, "}");
    size_t body = req.n - 4;
    req.p[0] = (char)(body >> 24);
    req.p[1] = (char)(body >> 16);
    req.p[2] = (char)(body >> 8);
    req.p[3] = (char)body;

    char why[256];
    const char *err = NULL;
    for (size_t off = 0; off < req.n && !err;) {
        ssize_t w = send(s, req.p + off, req.n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            err = "timed out";
        else if (w < 0) {
            snprintf(why, sizeof why, "[Errno %d] %s", errno, strerror(errno));
            err = why;
        } else
            off += (size_t)w;
    }
    unsigned char h[4];
    if (!err)
        err = recv_exact(s, (char *)h, 4, why, sizeof why);
    if (err)
        failed(&in, path, err);
    size_t n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
    if (n > MAX_MESSAGE) {
        snprintf(why, sizeof why, "message of %zu bytes is larger than %u", n, MAX_MESSAGE);
        failed(&in, path, why);
    }
    char *raw = malloc(n + 1);
    if (!raw)
        failed(&in, path, "out of memory");
    if ((err = recv_exact(s, raw, n, why, sizeof why)))
        failed(&in, path, err);
    close(s);

    struct reply r = {0};
    int doc = read_document(raw, n, reply_member, &r);
    if (doc == -2)
        failed(&in, path, "not JSON");
    if (doc == -3)
        failed(&in, path, "extra data");
    if (doc != 1 || !r.has_rc || !r.rc_int || r.out_kind == 2 || r.err_kind == 2)
        failed(&in, path, "its reply is not an object with an integer rc and string "
                          "stdout/stderr");
    write_all(1, r.out.p ? r.out.p : "", r.out.n);
    write_all(2, r.err.p ? r.err.p : "", r.err.n);
    return (int)(r.rc & 0xff);
}
