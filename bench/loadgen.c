/* A native JSON-RPC load generator for tachyond's Unix socket.
 *
 * The daemon and its load generator share this machine's two cores; a Python client spends tens of
 * microseconds a call that the daemon then does not get. This one spends about one. It only moves bytes:
 * the requests are written by the Python benchmark beforehand, and each connection keeps DEPTH of its own
 * requests in flight (default 1: the next request goes out when the previous answer is in, so 32
 * connections are 32 sequential clients; DEPTH > 1 is pipelining: a client sends many requests before it
 * reads the answers, which JSON-RPC over a stream and HTTP/1.1 keep-alive both allow).
 *
 *   loadgen [-d DEPTH] SOCKET CONNECTIONS REQUEST_FILE        JSON-RPC lines over a Unix socket
 *   loadgen [-d DEPTH] -h HOST:PORT CONNECTIONS REQUEST_FILE  HTTP/1.1 requests over TCP (IPv4)
 *
 * JSON-RPC: one request per line; an answer is a line, and counts as an error when it has an "error"
 * member at its top level. HTTP: each request is a 4-byte big-endian length and that many bytes (the format
 * of bench/wrk_requests.lua); an answer is a head and a Content-Length body, an error when its status is not
 * 2xx. Request i belongs to connection i % CONNECTIONS. Latency is from a request's send to its answer.
 * Prints one JSON object:
 * {"calls", "errors", "seconds", "calls_per_s", "p50_ms", "p99_ms", "depth", "first_error"}.
 * Built by bench/common.py with `cc -O2`; nothing else uses it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    long next;          /* index of this connection's next request (in steps of CONNECTIONS) */
    double *sent_at;    /* ring of DEPTH send times, oldest at head */
    int head, inflight;
    char *buf;          /* partial answers */
    size_t len, cap;
} conn_t;

static int depth = 1, http = 0;

/* Length of the first complete answer in buf (0: not complete yet); *ok is 0 for an error answer. */
static size_t answer_len(const char *buf, size_t len, int *ok) {
    if (!http) {
        const char *nl = memchr(buf, '\n', len);
        if (!nl) return 0;
        size_t line = (size_t)(nl - buf) + 1;
        /* tachyond writes "error" only as a top-level member of an error answer ("result" otherwise) */
        *ok = memmem(buf, line, "\"error\":", 8) == NULL;
        return line;
    }
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - buf) + 4, body = 0;
    for (const char *p = buf; p && p < end; p = memchr(p, '\n', (size_t)(end - p))) {
        if (*p == '\n') p++;
        if (end - p > 15 && strncasecmp(p, "content-length:", 15) == 0) body = strtoul(p + 15, NULL, 10);
    }
    if (len < head + body) return 0;
    *ok = len > 9 && buf[9] == '2';   /* "HTTP/1.1 2xx" */
    return head + body;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "d:h")) != -1) {
        if (opt == 'd') depth = atoi(optarg);
        else if (opt == 'h') http = 1;
        else return 2;
    }
    if (argc - optind != 3 || depth < 1) {
        fprintf(stderr, "usage: loadgen [-d DEPTH] [-h] SOCKET|HOST:PORT CONNECTIONS REQUEST_FILE\n");
        return 2;
    }
    const char *path = argv[optind];
    int nconn = atoi(argv[optind + 1]);
    if (nconn < 1 || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }
    struct sockaddr_in tcp = {.sin_family = AF_INET};
    if (http) {
        char host[64];
        const char *colon = strrchr(path, ':');
        if (!colon || colon - path >= (long)sizeof host) { fprintf(stderr, "loadgen: HOST:PORT\n"); return 2; }
        memcpy(host, path, (size_t)(colon - path));
        host[colon - path] = 0;
        tcp.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &tcp.sin_addr) != 1) { fprintf(stderr, "loadgen: bad IPv4 host\n"); return 2; }
    }

    FILE *f = fopen(argv[optind + 2], "rb");
    if (!f) die("open request file");
    struct stat st;
    if (fstat(fileno(f), &st)) die("stat request file");
    char *data = malloc((size_t)st.st_size + 1);
    if (!data || fread(data, 1, (size_t)st.st_size, f) != (size_t)st.st_size) die("read request file");
    fclose(f);
    long nlines = 0, k = 0;
    long *start;
    if (!http) {
        for (off_t i = 0; i < st.st_size; i++) nlines += data[i] == '\n';
        start = malloc(sizeof(long) * (size_t)(nlines + 1));
        start[k++] = 0;
        for (off_t i = 0; i < st.st_size; i++)
            if (data[i] == '\n') start[k++] = (long)i + 1;
    } else {   /* [4-byte big-endian length][request] records; start[i] is where request i begins */
        for (off_t i = 0; i + 4 <= st.st_size; nlines++)
            i += 4 + (((unsigned char)data[i] << 24) | ((unsigned char)data[i + 1] << 16) |
                      ((unsigned char)data[i + 2] << 8) | (unsigned char)data[i + 3]);
        start = malloc(sizeof(long) * (size_t)(nlines + 1));
        off_t i = 0;
        for (; k < nlines; k++) {
            long n = ((unsigned char)data[i] << 24) | ((unsigned char)data[i + 1] << 16) |
                     ((unsigned char)data[i + 2] << 8) | (unsigned char)data[i + 3];
            memmove(data + i - 4 * k, data + i + 4, (size_t)n);   /* drop the length prefixes in place */
            start[k] = (long)i - 4 * k;
            i += 4 + n;
        }
        start[k] = (long)i - 4 * k;
    }

    double *lat = malloc(sizeof(double) * (size_t)(nlines + 1));
    long done = 0, errors = 0;
    char first_error[512] = "";

    int ep = epoll_create1(0);
    conn_t *c = calloc((size_t)nconn, sizeof(conn_t));
    for (int i = 0; i < nconn; i++) {
        if (http) {
            int one = 1;
            c[i].fd = socket(AF_INET, SOCK_STREAM, 0);
            if (c[i].fd < 0 || connect(c[i].fd, (struct sockaddr *)&tcp, sizeof tcp)) die("connect");
            setsockopt(c[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        } else {
            c[i].fd = socket(AF_UNIX, SOCK_STREAM, 0);
            struct sockaddr_un a = {.sun_family = AF_UNIX};
            strcpy(a.sun_path, path);
            if (c[i].fd < 0 || connect(c[i].fd, (struct sockaddr *)&a, sizeof a)) die("connect");
        }
        c[i].cap = 65536;
        c[i].buf = malloc(c[i].cap);
        c[i].sent_at = calloc((size_t)depth, sizeof(double));
        c[i].next = i;
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &e)) die("epoll_ctl");
    }

    int live = 0;
    double t_start = now();
    for (int i = 0; i < nconn; i++) {
        while (c[i].inflight < depth && c[i].next < nlines) {
            c[i].sent_at[(c[i].head + c[i].inflight) % depth] = now();
            send_all(c[i].fd, data + start[c[i].next], (size_t)(start[c[i].next + 1] - start[c[i].next]));
            c[i].next += nconn;
            c[i].inflight++;
        }
        live += c[i].inflight > 0;
    }
    struct epoll_event ev[256];
    while (live > 0) {
        int n = epoll_wait(ep, ev, 256, 60000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        if (n == 0) {
            fprintf(stderr, "loadgen: no answer for 60 s\n");
            return 1;
        }
        for (int j = 0; j < n; j++) {
            conn_t *x = &c[ev[j].data.u32];
            if (x->cap - x->len < 65536) {
                x->cap *= 2;
                x->buf = realloc(x->buf, x->cap);
            }
            ssize_t r = read(x->fd, x->buf + x->len, x->cap - x->len);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                fprintf(stderr, "loadgen: the daemon closed a connection\n");
                return 1;
            }
            x->len += (size_t)r;
            size_t used = 0, line;
            int ok = 1;
            double t = now();
            while (x->inflight > 0 && (line = answer_len(x->buf + used, x->len - used, &ok)) > 0) {
                if (!ok) {
                    if (!errors) {
                        size_t n = strcspn(x->buf + used, "\r\n");
                        snprintf(first_error, sizeof first_error, "%.*s", (int)(n < line ? n : line), x->buf + used);
                    }
                    errors++;
                }
                lat[done++] = t - x->sent_at[x->head];
                x->head = (x->head + 1) % depth;
                x->inflight--;
                used += line;
                if (x->next < nlines) {
                    x->sent_at[(x->head + x->inflight) % depth] = t;
                    send_all(x->fd, data + start[x->next], (size_t)(start[x->next + 1] - start[x->next]));
                    x->next += nconn;
                    x->inflight++;
                }
            }
            memmove(x->buf, x->buf + used, x->len - used);
            x->len -= used;
            if (x->inflight == 0) live--;
        }
    }
    double seconds = now() - t_start;
    qsort(lat, (size_t)done, sizeof(double), cmp_double);
    for (char *p = first_error; *p; p++)
        if (*p == '"' || *p == '\\') *p = '\'';
    printf("{\"calls\": %ld, \"errors\": %ld, \"seconds\": %.3f, \"calls_per_s\": %.0f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"depth\": %d, \"first_error\": \"%s\"}\n",
           done, errors, seconds, done / seconds, done ? lat[done / 2] * 1e3 : 0.0,
           done ? lat[(long)((done - 1) * 0.99)] * 1e3 : 0.0, depth, first_error);
    return 0;
}
