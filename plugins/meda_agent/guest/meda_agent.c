/* meda-agent: runs commands, moves files and sets the identity of a guest for the meda host.
 *
 * One byte stream to the host (a virtio-serial port, a vsock connection, or with --listen a
 * unix socket), length-prefixed frames multiplexed by session id: see docs/agent.md. The
 * loop never blocks on a command: poll() covers the stream and every session's pipes, and a
 * command's output is read only while the buffer towards the host has room and the host
 * has granted the session output window (OUTPUT_ACK): a session the host does not read
 * stops on its own, never the stream.
 *
 * Build: cc -static -Os -Wall -Wextra -Werror -o meda-agent meda_agent.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>

#define VERSION 2
#define HDR 9                       /* u32 body length, u8 type, u32 session (big-endian) */
#define MAX_BODY (256 * 1024)       /* the longest frame body either side may send */
#define CHUNK (64 * 1024)           /* output and file data travel in chunks of at most this */
#define MAX_SESSIONS 64
#define OUT_CAP (1024 * 1024)       /* the buffer towards the host */
#define RESERVE (64 * 1024)         /* kept free in it for control frames */
#define STDIN_WINDOW (256 * 1024)   /* stdin bytes the host may send before they are acked */
#define OUTPUT_WINDOW (1024 * 1024) /* output bytes a session may send before they are acked */
#define PORT_NAME "org.meda.agent.0"
#define VSOCK_PORT 1024

enum {
    T_HELLO = 1, T_READY = 2, T_PING = 3, T_PONG = 4, T_EXEC = 5, T_STDIN = 6,
    T_STDIN_EOF = 7, T_KILL = 8, T_READ = 9, T_WRITE = 10, T_WRITE_DATA = 11,
    T_WRITE_END = 12, T_IDENTITY = 13, T_OUTPUT_ACK = 14,
    T_STDOUT = 20, T_STDERR = 21, T_EXIT = 22, T_FILE_DATA = 23, T_FILE_END = 24,
    T_WRITE_DONE = 25, T_STDIN_ACK = 26, T_ERROR = 27, T_STARTED = 28,
};
enum { K_FREE = 0, K_EXEC, K_READ, K_WRITE };

struct session {
    int kind;
    uint32_t id;
    pid_t pid;          /* process group leader of an exec; 0 once reaped */
    int status;
    int fds[2];         /* exec: stdout, stderr; read: the file; -1 when done */
    int in;             /* exec: the command's stdin; write: the temporary file */
    char *inbuf;
    size_t inlen;
    int in_eof;
    int werr;           /* write: the first errno while writing */
    size_t credit;      /* exec, read: output bytes the host accepts before its next ack */
    uint64_t count;
    char tmp[PATH_MAX];
    char path[PATH_MAX];
    uint32_t uid, gid, mode;
    int has_owner;
};

static struct session sessions[MAX_SESSIONS];
static unsigned char inb[HDR + MAX_BODY];
static size_t inlen;
static unsigned char outb[OUT_CAP];
static size_t outlen;
static int greeted;
static int host = -1;
static int sigpipe[2] = {-1, -1};
static const char *root = "";  /* --root: where identity finds /etc (tests) */
static int child_sync = -1;    /* in a forked child: where a failure before exec is told */

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void put64(unsigned char *p, uint64_t v) {
    put32(p, v >> 32); put32(p + 4, (uint32_t)v);
}

static size_t out_free(void) { return OUT_CAP - outlen; }

/* Append a frame whose body is a + b; the caller made sure it fits. */
static void emit2(int type, uint32_t sid, const void *a, size_t alen, const void *b, size_t blen) {
    if (outlen + HDR + alen + blen > OUT_CAP) return;  /* cannot happen: callers check */
    unsigned char *p = outb + outlen;
    put32(p, (uint32_t)(alen + blen)); p[4] = (unsigned char)type; put32(p + 5, sid);
    if (alen) memcpy(p + HDR, a, alen);
    if (blen) memcpy(p + HDR + alen, b, blen);
    outlen += HDR + alen + blen;
}

static void emit(int type, uint32_t sid, const void *body, size_t len) {
    emit2(type, sid, body, len, NULL, 0);
}

static void emit_error(uint32_t sid, int err, const char *what) {
    unsigned char e[4];
    char msg[512];
    put32(e, (uint32_t)err);
    snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
    emit2(T_ERROR, sid, e, 4, msg, strlen(msg));
}

static void closefd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static struct session *find(uint32_t sid) {
    for (int i = 0; i < MAX_SESSIONS; i++)
        if (sessions[i].kind != K_FREE && sessions[i].id == sid) return &sessions[i];
    return NULL;
}

static struct session *alloc_session(uint32_t sid) {
    if (sid == 0) { emit_error(sid, EINVAL, "session 0 is reserved"); return NULL; }
    if (find(sid)) { emit_error(sid, EEXIST, "session in use"); return NULL; }
    for (int i = 0; i < MAX_SESSIONS; i++) {
        struct session *s = &sessions[i];
        if (s->kind != K_FREE) continue;
        memset(s, 0, sizeof *s);
        s->id = sid; s->fds[0] = s->fds[1] = s->in = -1;
        s->credit = OUTPUT_WINDOW;
        return s;
    }
    emit_error(sid, EAGAIN, "too many sessions");
    return NULL;
}

static void free_session(struct session *s) {
    closefd(&s->fds[0]); closefd(&s->fds[1]); closefd(&s->in);
    if (s->kind == K_WRITE && s->tmp[0]) unlink(s->tmp);
    free(s->inbuf);
    if (s->kind == K_EXEC && s->pid > 0) kill(-s->pid, SIGKILL);  /* reaped in the loop */
    memset(s, 0, sizeof *s);
    s->fds[0] = s->fds[1] = s->in = -1;
}

static void reset_sessions(void) {
    for (int i = 0; i < MAX_SESSIONS; i++)
        if (sessions[i].kind != K_FREE) free_session(&sessions[i]);
    inlen = outlen = 0; greeted = 0;
}

static void nonblock(int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* ---- the command's side of a fork ---- */

static void child_setup(int in, int out, int err) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL); signal(SIGCHLD, SIG_DFL);
    setsid();
    dup2(in, 0); dup2(out, 1); dup2(err, 2);
    for (int fd = 3; fd < 1024; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);  /* 0-2 only */
}

static int run_wait(char *const argv[]) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) { execvp(argv[0], argv); _exit(127); }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int write_atomic(const char *path, const char *text, mode_t mode) {
    char tmp[PATH_MAX + 64];
    snprintf(tmp, sizeof tmp, "%s.meda-new", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return -1;
    size_t len = strlen(text);
    int ok = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, path) != 0) { unlink(tmp); return -1; }
    return 0;
}

static int new_ssh_keys(void) {
    char dir[PATH_MAX], file[PATH_MAX * 2];
    snprintf(dir, sizeof dir, "%s/etc/ssh", root);
    DIR *d = opendir(dir);
    if (!d) return 0;
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "ssh_host_", 9) == 0) {
            snprintf(file, sizeof file, "%s/%s", dir, e->d_name);
            unlink(file); found = 1;
        }
    closedir(d);
    if (!found) return 0;
    char *keygen[] = {"ssh-keygen", "-A", "-f", (char *)(root[0] ? root : "/"), NULL};
    if (run_wait(keygen) != 0) { fprintf(stderr, "ssh-keygen -A failed\n"); return -1; }
    printf("new ssh host keys\n");
    if (!root[0] && access("/run/systemd/system", F_OK) == 0) {
        char *restart[] = {"systemctl", "try-restart", "ssh.service", "sshd.service", NULL};
        run_wait(restart);
    }
    return 0;
}

/* Entropy the host sent with IDENTITY. A clone restored from its template's memory starts
 * with the template's random state: without fresh bytes from the host, two clones would
 * draw the same machine-id and the same SSH host keys. */
static unsigned char host_seed[64];
static size_t host_seed_len;

static void reseed(void) {
    if (!host_seed_len) return;
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    if (write(fd, host_seed, host_seed_len) < 0) { /* mixed in, or not: the XOR below holds */ }
    ioctl(fd, RNDRESEEDCRNG);  /* the kernel's generator takes them now, not in a minute */
    close(fd);
}

/* The identity child: hostname, machine-id, SSH host keys; exits 0 or 1 (why on stderr). */
static void identity(const char *hostname) {
    char path[PATH_MAX + 32], etc[PATH_MAX], text[HOST_NAME_MAX + 2];
    int rc = 0;
    reseed();
    if (sethostname(hostname, strlen(hostname)) != 0) {
        fprintf(stderr, "sethostname: %s\n", strerror(errno)); _exit(1);
    }
    printf("hostname %s\n", hostname);
    snprintf(etc, sizeof etc, "%s/etc", root);
    snprintf(path, sizeof path, "%s/hostname", etc);
    snprintf(text, sizeof text, "%s\n", hostname);
    if (access(etc, W_OK) == 0 && write_atomic(path, text, 0644) != 0) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno)); rc = 1;
    }
    snprintf(path, sizeof path, "%s/machine-id", etc);
    if (access(path, F_OK) == 0) {
        unsigned char raw[16];
        char hex[34];
        if (getrandom(raw, sizeof raw, 0) != sizeof raw) _exit(1);
        for (size_t i = 0; i < host_seed_len; i++) raw[i % sizeof raw] ^= host_seed[i];
        raw[6] = (raw[6] & 0x0f) | 0x40; raw[8] = (raw[8] & 0x3f) | 0x80;  /* as a v4 UUID */
        for (int i = 0; i < 16; i++) sprintf(hex + 2 * i, "%02x", raw[i]);
        strcpy(hex + 32, "\n");
        if (write_atomic(path, hex, 0444) != 0) {
            fprintf(stderr, "%s: %s\n", path, strerror(errno)); rc = 1;
        } else printf("new machine-id\n");
    }
    if (new_ssh_keys() != 0) rc = 1;
    fflush(stdout);
    _exit(rc);
}

/* ---- starting sessions ---- */

/* Fork a command with pipes; run() is the child's work (it never returns). */
static void start_child(struct session *s, void (*run)(void *), void *arg) {
    int in[2], out[2], err[2], sync[2];
    if (pipe(in) || pipe(out) || pipe(err) || pipe2(sync, O_CLOEXEC)) {
        emit_error(s->id, errno, "pipe"); free_session(s); return;  /* fds leak only on EMFILE */
    }
    pid_t pid = fork();
    if (pid < 0) { emit_error(s->id, errno, "fork"); free_session(s); return; }
    if (pid == 0) {
        close(in[1]); close(out[0]); close(err[0]); close(sync[0]);
        child_setup(in[0], out[1], err[1]);
        child_sync = sync[1];
        run(arg);
        int e = errno;
        if (write(child_sync, &e, sizeof e) < 0) _exit(126);
        _exit(126);
    }
    close(in[0]); close(out[1]); close(err[1]); close(sync[1]);
    int e = 0;
    ssize_t n;
    while ((n = read(sync[0], &e, sizeof e)) < 0 && errno == EINTR) {}
    close(sync[0]);
    s->kind = K_EXEC; s->pid = pid;
    s->in = in[1]; s->fds[0] = out[0]; s->fds[1] = err[0];
    nonblock(s->in); nonblock(s->fds[0]); nonblock(s->fds[1]);
    s->inbuf = malloc(STDIN_WINDOW);
    if (n == sizeof e || !s->inbuf) {  /* the child could not change to the directory */
        emit_error(s->id, n == sizeof e ? e : ENOMEM, "cwd");
        free_session(s);
    } else emit(T_STARTED, s->id, NULL, 0);
}

struct exec_args { char *cwd; char **argv; char **env; };

static void run_exec(void *p) {
    struct exec_args *a = p;
    if (a->cwd && chdir(a->cwd) != 0) return;  /* errno goes to the parent */
    clearenv();
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    setenv("HOME", "/root", 1);
    for (char **e = a->env; *e; e++) putenv(*e);
    execvp(a->argv[0], a->argv);
    dprintf(2, "meda-agent: %s: %s\n", a->argv[0], strerror(errno));
    _exit(127);
}

static void run_identity(void *p) {
    close(child_sync);  /* the parent waits on it: it must not wait for the whole identity */
    identity(p);
}

/* EXEC body: u16 argc, u16 envc, then NUL-terminated cwd ("" = none), argv..., env... */
static void do_exec(uint32_t sid, unsigned char *b, size_t len) {
    if (len < 4) { emit_error(sid, EINVAL, "exec"); return; }
    size_t argc = (size_t)b[0] << 8 | b[1], envc = (size_t)b[2] << 8 | b[3];
    size_t want = 1 + argc + envc, have = 0;
    if (argc == 0 || len == 4 || b[len - 1] != 0) { emit_error(sid, EINVAL, "exec"); return; }
    for (size_t i = 4; i < len; i++) have += b[i] == 0;
    if (have != want) { emit_error(sid, EINVAL, "exec"); return; }
    char **strs = calloc(want + 2, sizeof *strs);
    if (!strs) { emit_error(sid, ENOMEM, "exec"); return; }
    char *p = (char *)b + 4;
    for (size_t i = 0; i < want; i++) { strs[i + (i > argc)] = p; p += strlen(p) + 1; }
    /* strs: cwd, argv[0..argc-1], NULL, env[0..envc-1], NULL */
    struct exec_args a = {strs[0][0] ? strs[0] : NULL, strs + 1, strs + argc + 2};
    struct session *s = alloc_session(sid);
    if (s) start_child(s, run_exec, &a);
    free(strs);
}

/* IDENTITY body: the hostname, then optionally NUL and up to 64 bytes of the host's entropy. */
static void do_identity(uint32_t sid, unsigned char *b, size_t len) {
    static char name[HOST_NAME_MAX + 1];
    unsigned char *end = memchr(b, 0, len);
    size_t n = end ? (size_t)(end - b) : len, seed = end ? len - n - 1 : 0;
    if (n == 0 || n > HOST_NAME_MAX || seed > sizeof host_seed) {
        emit_error(sid, EINVAL, "hostname"); return;
    }
    memcpy(name, b, n); name[n] = 0;
    memcpy(host_seed, b + n + (end ? 1 : 0), seed); host_seed_len = seed;
    struct session *s = alloc_session(sid);
    if (s) start_child(s, run_identity, name);
}

static int copy_path(char *dst, const unsigned char *b, size_t len) {
    if (len == 0 || len >= PATH_MAX || memchr(b, 0, len)) return -1;
    memcpy(dst, b, len); dst[len] = 0;
    return 0;
}

static void do_read(uint32_t sid, unsigned char *b, size_t len) {
    char path[PATH_MAX];
    struct stat st;
    if (copy_path(path, b, len)) { emit_error(sid, EINVAL, "path"); return; }
    int fd = open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { emit_error(sid, errno, path); return; }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        emit_error(sid, S_ISDIR(st.st_mode) ? EISDIR : EINVAL, path); close(fd); return;
    }
    struct session *s = alloc_session(sid);
    if (!s) { close(fd); return; }
    s->kind = K_READ; s->fds[0] = fd;
}

/* WRITE body: u32 mode, u32 uid, u32 gid, u8 has_owner, path */
static void do_write(uint32_t sid, unsigned char *b, size_t len) {
    char path[PATH_MAX];
    if (len < 13 || copy_path(path, b + 13, len - 13)) { emit_error(sid, EINVAL, "write"); return; }
    char *slash = strrchr(path, '/');
    if (!slash || !slash[1]) { emit_error(sid, EINVAL, "path"); return; }
    struct session *s = alloc_session(sid);
    if (!s) return;
    s->kind = K_WRITE;
    s->mode = get32(b) & 07777; s->uid = get32(b + 4); s->gid = get32(b + 8); s->has_owner = b[12];
    strcpy(s->path, path);
    snprintf(s->tmp, sizeof s->tmp, "%.*s/.%s.meda-XXXXXX", (int)(slash - path), path, slash + 1);
    s->in = mkostemp(s->tmp, O_CLOEXEC);
    if (s->in < 0) { int e = errno; s->tmp[0] = 0; emit_error(sid, e, path); free_session(s); }
}

static void write_data(struct session *s, unsigned char *b, size_t len) {
    while (len && !s->werr) {
        ssize_t n = write(s->in, b, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { s->werr = errno; break; }
        b += n; len -= (size_t)n; s->count += (uint64_t)n;
    }
}

static void write_end(struct session *s) {
    int e = s->werr;
    if (!e && s->has_owner && fchown(s->in, s->uid, s->gid) != 0) e = errno;
    if (!e && fchmod(s->in, s->mode) != 0) e = errno;
    if (!e && fsync(s->in) != 0) e = errno;
    if (!e && rename(s->tmp, s->path) != 0) e = errno;
    if (e) { emit_error(s->id, e, s->path); free_session(s); return; }
    unsigned char n[8];
    put64(n, s->count);
    emit(T_WRITE_DONE, s->id, n, 8);
    s->tmp[0] = 0;
    free_session(s);
}

static void do_stdin(struct session *s, unsigned char *b, size_t len) {
    if (s->kind != K_EXEC || s->in_eof || s->in < 0) return;  /* ended: drop it */
    if (s->inlen + len > STDIN_WINDOW) {  /* the host ignored the window */
        emit_error(s->id, EOVERFLOW, "stdin window"); closefd(&s->in); return;
    }
    memcpy(s->inbuf + s->inlen, b, len); s->inlen += len;
}

static void do_output_ack(struct session *s, unsigned char *b, size_t len) {
    if (s->kind == K_WRITE) return;
    if (len != 4 || s->credit + get32(b) > OUTPUT_WINDOW) {  /* the host broke the window */
        emit_error(s->id, EOVERFLOW, "output window"); free_session(s); return;
    }
    s->credit += get32(b);
}

/* One whole frame from the host. */
static void dispatch(int type, uint32_t sid, unsigned char *b, size_t len) {
    struct session *s = find(sid);
    switch (type) {
    case T_PING: emit(T_PONG, sid, b, len > 64 ? 64 : len); return;
    case T_EXEC: do_exec(sid, b, len); return;
    case T_IDENTITY: do_identity(sid, b, len); return;
    case T_READ: do_read(sid, b, len); return;
    case T_WRITE: do_write(sid, b, len); return;
    case T_HELLO: return;  /* not a whole hello: parse() greets those */
    case T_STDIN: if (s) do_stdin(s, b, len); return;
    case T_STDIN_EOF: if (s && s->kind == K_EXEC) s->in_eof = 1; return;
    case T_OUTPUT_ACK: if (s) do_output_ack(s, b, len); return;
    case T_WRITE_DATA: if (s && s->kind == K_WRITE) write_data(s, b, len); return;
    case T_WRITE_END: if (s && s->kind == K_WRITE) write_end(s); return;
    case T_KILL:
        if (s && s->kind == K_EXEC && s->pid > 0) kill(-s->pid, SIGKILL);
        else if (s) { emit_error(sid, ECANCELED, "killed"); free_session(s); }
        return;
    default: emit_error(sid, EPROTO, "unknown frame type");
    }
}

static int is_hello(const unsigned char *p) {
    return get32(p) == 24 && p[4] == T_HELLO && get32(p + 5) == 0 && !memcmp(p + HDR, "MEDA", 4);
}

/* Answer the hello at p: READY with its nonce. */
static void greet(const unsigned char *p) {
    unsigned char r[24];
    memcpy(r, "MEDA", 4); put32(r + 4, VERSION); memcpy(r + 8, p + HDR + 8, 16);
    emit(T_READY, 0, r, 24);
    greeted = 1;
}

/* Parse what the host sent; -1 drops the connection (a frame over the cap). */
static int parse(void) {
    size_t off = 0;
    while (!greeted && inlen - off >= HDR + 24) {  /* skip stale bytes up to a hello */
        unsigned char *p = inb + off;
        if (is_hello(p)) { greet(p); off += HDR + 24; }
        else off++;
    }
    while (greeted && inlen - off >= HDR && out_free() >= RESERVE) {
        unsigned char *p = inb + off;
        uint32_t len = get32(p);
        if (len > MAX_BODY) return -1;
        if (inlen - off < HDR + len) break;
        if (is_hello(p)) {
            /* A host that connected anew without this side seeing the last one go (a guest
             * restored from memory; a virtio-serial close and open too quick to notice):
             * the old host's sessions go, the new one is greeted. */
            for (int i = 0; i < MAX_SESSIONS; i++)
                if (sessions[i].kind != K_FREE) free_session(&sessions[i]);
            greet(p);
        } else dispatch(p[4], get32(p + 5), p + HDR, len);
        off += HDR + len;
    }
    memmove(inb, inb + off, inlen - off);
    inlen -= off;
    return 0;
}

/* ---- the loop ---- */

static void on_sigchld(int sig) {
    (void)sig;
    int e = errno;
    if (write(sigpipe[1], "c", 1) < 0) {}
    errno = e;
}

static void reap(void) {
    char buf[64];
    while (read(sigpipe[0], buf, sizeof buf) > 0) {}
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
        for (int i = 0; i < MAX_SESSIONS; i++)
            if (sessions[i].kind == K_EXEC && sessions[i].pid == pid) {
                sessions[i].pid = 0; sessions[i].status = st;
            }
}

/* Move a session's output towards the host; `drain`: the command has ended. */
static void pump_out(struct session *s, int i, int drain) {
    static const int types[2][2] = {{T_STDOUT, T_STDERR}, {T_FILE_DATA, T_FILE_DATA}};
    while (s->fds[i] >= 0 && s->credit && out_free() >= HDR + CHUNK + RESERVE) {
        ssize_t n = read(s->fds[i], outb + outlen + HDR, s->credit < CHUNK ? s->credit : CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN && !drain) return;
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && s->kind == K_READ) {
                emit_error(s->id, errno, "read"); free_session(s); return;
            }
            closefd(&s->fds[i]);
            if (s->kind == K_READ) {
                unsigned char c[8];
                put64(c, s->count);
                emit(T_FILE_END, s->id, c, 8);
                free_session(s);
            }
            return;
        }
        unsigned char *p = outb + outlen;
        put32(p, (uint32_t)n); p[4] = (unsigned char)types[s->kind == K_READ][i];
        put32(p + 5, s->id);
        outlen += HDR + (size_t)n; s->count += (uint64_t)n; s->credit -= (size_t)n;
        if (!drain) return;  /* one chunk per turn: other sessions get theirs */
    }
}

static void pump_in(struct session *s) {
    if (s->in < 0 || out_free() < HDR + 4) return;
    if (s->inlen) {
        ssize_t n = write(s->in, s->inbuf, s->inlen);
        if (n < 0 && errno != EAGAIN && errno != EINTR) { closefd(&s->in); s->inlen = 0; return; }
        if (n > 0) {
            memmove(s->inbuf, s->inbuf + n, s->inlen - (size_t)n);
            s->inlen -= (size_t)n;
            unsigned char a[4];
            put32(a, (uint32_t)n);
            emit(T_STDIN_ACK, s->id, a, 4);
        }
    }
    if (!s->inlen && s->in_eof) closefd(&s->in);
}

static void finish(struct session *s) {
    if (s->kind != K_EXEC || s->pid != 0 || s->fds[0] >= 0 || s->fds[1] >= 0) return;
    if (out_free() < HDR + 8) return;
    unsigned char e[8];
    int st = s->status;
    put32(e, WIFEXITED(st) ? (uint32_t)WEXITSTATUS(st) : 0xffffffffu);
    put32(e + 4, WIFSIGNALED(st) ? (uint32_t)WTERMSIG(st) : 0xffffffffu);
    emit(T_EXIT, s->id, e, 8);
    free_session(s);
}

static int flush_out(void) {
    while (outlen) {
        ssize_t n = write(host, outb, outlen);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 0;
        if (n <= 0) return -1;
        memmove(outb, outb + n, outlen - (size_t)n);
        outlen -= (size_t)n;
    }
    return 0;
}

/* Serve one host connection on fd until it ends. */
static void serve(int fd) {
    struct pollfd pfd[2 + 3 * MAX_SESSIONS];
    struct session *owner[2 + 3 * MAX_SESSIONS];
    int which[2 + 3 * MAX_SESSIONS];
    host = fd;
    nonblock(fd);
    for (;;) {
        int n = 0;
        pfd[n++] = (struct pollfd){sigpipe[0], POLLIN, 0};
        pfd[n++] = (struct pollfd){fd, (short)((inlen < sizeof inb ? POLLIN : 0) | (outlen ? POLLOUT : 0)), 0};
        for (int i = 0; i < MAX_SESSIONS; i++) {
            struct session *s = &sessions[i];
            if (s->kind == K_FREE) continue;
            for (int k = 0; k < 2; k++)
                if (s->fds[k] >= 0 && s->credit && out_free() >= HDR + CHUNK + RESERVE) {
                    owner[n] = s; which[n] = k; pfd[n++] = (struct pollfd){s->fds[k], POLLIN, 0};
                }
            if (s->kind == K_EXEC && s->in >= 0 && (s->inlen || s->in_eof)) {
                owner[n] = s; which[n] = 2; pfd[n++] = (struct pollfd){s->in, POLLOUT, 0};
            }
        }
        if (poll(pfd, (nfds_t)n, -1) < 0 && errno != EINTR) break;
        if (pfd[0].revents) reap();
        if (pfd[1].revents & (POLLERR | POLLNVAL)) break;
        if (pfd[1].revents & POLLOUT && flush_out() < 0) break;
        if (pfd[1].revents & (POLLIN | POLLHUP)) {
            ssize_t r = read(fd, inb + inlen, sizeof inb - inlen);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) break;
            if (r > 0) inlen += (size_t)r;
        }
        if (parse() < 0) break;
        for (int j = 2; j < n; j++) {
            if (!pfd[j].revents || owner[j]->kind == K_FREE) continue;
            if (which[j] == 2) pump_in(owner[j]);
            else pump_out(owner[j], which[j], 0);
        }
        for (int i = 0; i < MAX_SESSIONS; i++) {
            struct session *s = &sessions[i];
            if (s->kind == K_EXEC && s->pid == 0) { pump_out(s, 0, 1); pump_out(s, 1, 1); }
            if (s->kind == K_EXEC) { if (!s->in_eof || s->in >= 0) pump_in(s); finish(s); }
        }
        if (flush_out() < 0) break;
    }
    reset_sessions();
}

static int vport_path(char *dev, size_t size) {
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    int found = 0;
    if (!d) return 0;
    while (!found && (e = readdir(d))) {
        char path[PATH_MAX], name[128] = {0};
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, name, sizeof name - 1);
        close(fd);
        while (n > 0 && (name[n - 1] == '\n')) name[--n] = 0;
        if (n > 0 && strcmp(name, PORT_NAME) == 0) {
            snprintf(dev, size, "/dev/%s", e->d_name); found = 1;
        }
    }
    closedir(d);
    return found;
}

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&t, NULL);
}

/* The virtio-serial port: serve whenever a host is connected (no POLLHUP). */
static void serve_vport(const char *dev) {
    for (;;) {
        int fd = open(dev, O_RDWR | O_CLOEXEC);
        if (fd < 0) { pause_ms(1000); continue; }
        for (;;) {
            struct pollfd p = {fd, POLLIN, 0};
            poll(&p, 1, 0);
            reap();
            if (p.revents & POLLNVAL) break;
            if (!(p.revents & POLLHUP) || (p.revents & POLLIN)) serve(fd);
            pause_ms(50);
        }
        close(fd);
    }
}

static void serve_listener(int ls) {
    for (;;) {
        int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) { if (errno != EINTR) pause_ms(100); continue; }
        serve(c);
        close(c);
        reap();
    }
}

/* vsock (cloud-hypervisor), one connection at a time. Until one comes, the virtio-serial
 * port is looked for again every second: under systemd the agent may start before the
 * port's driver is loaded, and a vsock listener needs no device, so a QEMU guest's agent
 * would otherwise wait on it for ever. */
static void serve_vsock(int ls) {
    char dev[PATH_MAX];
    for (;;) {
        struct pollfd p = {ls, POLLIN, 0};
        if (poll(&p, 1, 1000) > 0) {
            int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) { serve(c); close(c); }
        }
        reap();
        if (vport_path(dev, sizeof dev)) { close(ls); serve_vport(dev); }
    }
}

static int listen_unix(const char *path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) return -1;
    strcpy(a.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unlink(path);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) return -1;
    return s;
}

static int listen_vsock(void) {
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = VSOCK_PORT, .svm_cid = VMADDR_CID_ANY};
    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) { close(s); return -1; }
    return s;
}

int main(int argc, char **argv) {
    const char *listen_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc) listen_path = argv[++i];
        else if (!strcmp(argv[i], "--root") && i + 1 < argc) root = argv[++i];
        else { fprintf(stderr, "usage: meda-agent [--listen PATH] [--root DIR]\n"); return 2; }
    }
    for (int fd = open("/dev/null", O_RDWR); fd >= 0 && fd < 3; fd = open("/dev/null", O_RDWR)) {}
    signal(SIGPIPE, SIG_IGN);
    if (pipe2(sigpipe, O_CLOEXEC | O_NONBLOCK)) return 1;
    struct sigaction sa = {.sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
    sigaction(SIGCHLD, &sa, NULL);
    for (int i = 0; i < MAX_SESSIONS; i++) sessions[i].fds[0] = sessions[i].fds[1] = sessions[i].in = -1;
    if (listen_path) {
        int ls = listen_unix(listen_path);
        if (ls < 0) { perror(listen_path); return 1; }
        serve_listener(ls);
    }
    if (chdir("/") != 0) return 1;
    for (;;) {  /* the port may appear late at boot */
        char dev[PATH_MAX];
        if (vport_path(dev, sizeof dev)) serve_vport(dev);
        int ls = listen_vsock();
        if (ls >= 0) serve_vsock(ls);
        pause_ms(1000);
    }
}
