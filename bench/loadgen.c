/* A native JSON-RPC load generator for tachyond's Unix socket.
 *
 * The daemon and its load generator share this machine's two cores; a Python client spends tens of
 * microseconds a call that the daemon then does not get. This one spends about one. It only moves bytes:
 * the requests are written by the Python benchmark beforehand, one JSON object per line, and each
 * connection sends its own lines one at a time (the next request goes out when the previous answer is in),
 * so 32 connections are 32 sequential clients.
 *
 *   loadgen SOCKET CONNECTIONS REQUEST_FILE
 *
 * Line i of REQUEST_FILE belongs to connection i % CONNECTIONS. Prints one JSON object:
 * {"calls", "errors", "seconds", "calls_per_s", "p50_ms", "p99_ms", "first_error"}.
 * An answer counts as an error when it has an "error" member at its top level.
 * Built by bench/common.py with `cc -O2`; nothing else uses it.
 */
#define _GNU_SOURCE
#include <errno.h>
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
    long next;          /* index of this connection's next line (in steps of CONNECTIONS) */
    double sent_at;
    char *buf;          /* partial answer */
    size_t len, cap;
} conn_t;

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
    if (argc != 4) {
        fprintf(stderr, "usage: loadgen SOCKET CONNECTIONS REQUEST_FILE\n");
        return 2;
    }
    const char *path = argv[1];
    int nconn = atoi(argv[2]);
    if (nconn < 1 || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }

    FILE *f = fopen(argv[3], "rb");
    if (!f) die("open request file");
    struct stat st;
    if (fstat(fileno(f), &st)) die("stat request file");
    char *data = malloc((size_t)st.st_size + 1);
    if (!data || fread(data, 1, (size_t)st.st_size, f) != (size_t)st.st_size) die("read request file");
    fclose(f);
    long nlines = 0;
    for (off_t i = 0; i < st.st_size; i++) nlines += data[i] == '\n';
    long *start = malloc(sizeof(long) * (size_t)(nlines + 1));
    long k = 0;
    start[k++] = 0;
    for (off_t i = 0; i < st.st_size; i++)
        if (data[i] == '\n') start[k++] = (long)i + 1;

    double *lat = malloc(sizeof(double) * (size_t)(nlines + 1));
    long done = 0, errors = 0;
    char first_error[512] = "";

    int ep = epoll_create1(0);
    conn_t *c = calloc((size_t)nconn, sizeof(conn_t));
    for (int i = 0; i < nconn; i++) {
        c[i].fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strcpy(a.sun_path, path);
        if (c[i].fd < 0 || connect(c[i].fd, (struct sockaddr *)&a, sizeof a)) die("connect");
        c[i].cap = 65536;
        c[i].buf = malloc(c[i].cap);
        c[i].next = i;
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &e)) die("epoll_ctl");
    }

    int live = 0;
    double t_start = now();
    for (int i = 0; i < nconn; i++) {
        if (c[i].next < nlines) {
            c[i].sent_at = now();
            send_all(c[i].fd, data + start[c[i].next], (size_t)(start[c[i].next + 1] - start[c[i].next]));
            c[i].next += nconn;
            live++;
        }
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
            char *nl = memchr(x->buf, '\n', x->len);
            if (!nl) continue;
            double t = now();
            size_t line = (size_t)(nl - x->buf) + 1;
            /* tachyond writes "error" only as a top-level member of an error answer ("result" otherwise) */
            if (memmem(x->buf, line, "\"error\":", 8)) {
                if (!errors) snprintf(first_error, sizeof first_error, "%.*s", (int)(line - 1), x->buf);
                errors++;
            }
            lat[done++] = t - x->sent_at;
            memmove(x->buf, x->buf + line, x->len - line);
            x->len -= line;
            if (x->next < nlines) {
                x->sent_at = t;
                send_all(x->fd, data + start[x->next], (size_t)(start[x->next + 1] - start[x->next]));
                x->next += nconn;
            } else {
                live--;
            }
        }
    }
    double seconds = now() - t_start;
    qsort(lat, (size_t)done, sizeof(double), cmp_double);
    for (char *p = first_error; *p; p++)
        if (*p == '"' || *p == '\\') *p = '\'';
    printf("{\"calls\": %ld, \"errors\": %ld, \"seconds\": %.3f, \"calls_per_s\": %.0f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"first_error\": \"%s\"}\n",
           done, errors, seconds, done / seconds, done ? lat[done / 2] * 1e3 : 0.0,
           done ? lat[(long)((done - 1) * 0.99)] * 1e3 : 0.0, first_error);
    return 0;
}
