/*
 * xsshim: an LD_PRELOAD object that lets Debian's C xenstored and oxenstored run without a
 * hypervisor, for conformance tests only.
 *
 * Why each override exists:
 *  - libxenctrl: opening the hypervisor interface fails without Xen; every domain is reported
 *    alive so introduced domains stay introduced; foreign mappings become anonymous pages.
 *  - libxengnttab: a domain's ring is "mapped" as an anonymous page (nothing ever writes it).
 *  - libxenevtchn: event channels are a pipe that never fires; bind calls hand out increasing
 *    port numbers so the daemons' bookkeeping stays consistent.
 *  - open/open64: /proc/xen/xsd_port and /proc/xen/xsd_kva (dom0's ring) come from files in
 *    $XS_SHIM_DIR, which the test launcher creates.
 *  - setrlimit: oxenstored asks for more open files than an unprivileged process may have.
 *  - bind/unlink/mkdir: oxenstored hard-codes /var/run/xenstored/ (its socket, and a "db" dump
 *    written at exit); the socket goes to $XENSTORED_PATH, the rest to $XS_SHIM_DIR.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#define PAGE 4096

static void *anon_page(void)
{
    void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* ---- libxenctrl ---------------------------------------------------------------------- */
static int xc_dummy;

xc_interface *xc_interface_open(xentoollog_logger *l, xentoollog_logger *d, unsigned flags)
{
    (void)l; (void)d; (void)flags;
    return (xc_interface *)&xc_dummy;
}

int xc_interface_close(xc_interface *xch) { (void)xch; return 0; }

int xc_domain_getinfo(xc_interface *xch, uint32_t first, unsigned int max, xc_dominfo_t *info)
{
    (void)xch;
    if (max < 1) return 0;
    memset(info, 0, sizeof(*info));
    info->domid = first;
    info->running = 1;
    return 1;
}

int xc_domain_getinfolist(xc_interface *xch, uint32_t first, unsigned int max, xc_domaininfo_t *info)
{
    (void)xch;
    if (max < 1) return 0;
    memset(info, 0, sizeof(*info));
    info->domain = first;
    info->flags = XEN_DOMINF_running;
    return 1;
}

void *xc_map_foreign_range(xc_interface *xch, uint32_t dom, int size, int prot, unsigned long mfn)
{
    (void)xch; (void)dom; (void)size; (void)prot; (void)mfn;
    return anon_page();
}

/* ---- libxengnttab -------------------------------------------------------------------- */
static int gnt_dummy;

xengnttab_handle *xengnttab_open(struct xentoollog_logger *l, unsigned flags)
{
    (void)l; (void)flags;
    return (xengnttab_handle *)&gnt_dummy;
}

int xengnttab_close(xengnttab_handle *h) { (void)h; return 0; }

int xengnttab_set_max_grants(xengnttab_handle *h, uint32_t n) { (void)h; (void)n; return 0; }

void *xengnttab_map_grant_ref(xengnttab_handle *h, uint32_t dom, uint32_t ref, int prot)
{
    (void)h; (void)dom; (void)ref; (void)prot;
    return anon_page();
}

int xengnttab_unmap(xengnttab_handle *h, void *addr, uint32_t count)
{
    (void)h;
    return munmap(addr, (size_t)count * PAGE);
}

/* ---- libxenevtchn -------------------------------------------------------------------- */
struct xenevtchn_handle { int rd, wr; };
static int next_port = 10;

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *l, unsigned flags)
{
    int fds[2];
    struct xenevtchn_handle *h;
    (void)l; (void)flags;
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return NULL;
    h = malloc(sizeof(*h));
    if (!h) return NULL;
    h->rd = fds[0];
    h->wr = fds[1];
    return h;
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *l, int fd, unsigned flags)
{
    (void)fd;
    return xenevtchn_open(l, flags);
}

int xenevtchn_close(xenevtchn_handle *h)
{
    if (h) { close(h->rd); close(h->wr); free(h); }
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *h) { return h->rd; }
int xenevtchn_notify(xenevtchn_handle *h, evtchn_port_t p) { (void)h; (void)p; return 0; }
int xenevtchn_unbind(xenevtchn_handle *h, evtchn_port_t p) { (void)h; (void)p; return 0; }
int xenevtchn_unmask(xenevtchn_handle *h, evtchn_port_t p) { (void)h; (void)p; return 0; }

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *h, unsigned int virq)
{
    (void)h; (void)virq;
    return next_port++;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *h, uint32_t dom,
                                                     evtchn_port_t remote)
{
    (void)h; (void)dom; (void)remote;
    return next_port++;
}

xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *h, uint32_t dom)
{
    (void)h; (void)dom;
    return next_port++;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *h)
{
    (void)h;
    errno = EAGAIN;
    return -1;
}

/* ---- libc ---------------------------------------------------------------------------- */
/* Map a path the daemons hard-code to one in our scratch directory; NULL when not ours. */
static const char *redirect(const char *path, char *buf, size_t len)
{
    const char *dir = getenv("XS_SHIM_DIR");
    const char *sock = getenv("XENSTORED_PATH");
    if (!path) return NULL;
    if (dir && strcmp(path, "/proc/xen/xsd_port") == 0) {
        snprintf(buf, len, "%s/xsd_port", dir);
        return buf;
    }
    if (dir && strcmp(path, "/proc/xen/xsd_kva") == 0) {
        snprintf(buf, len, "%s/xsd_kva", dir);
        return buf;
    }
    /* oxenstored's run directory (socket, socket_ro, its "db" dump at exit) */
    const char *name = NULL;
    if (strcmp(path, "/var/run/xenstored") == 0 || strcmp(path, "/run/xenstored") == 0)
        return dir;
    if (strncmp(path, "/var/run/xenstored/", 19) == 0)
        name = path + 19;
    else if (strncmp(path, "/run/xenstored/", 15) == 0)
        name = path + 15;
    if (!name)
        return NULL;
    if (sock && strcmp(name, "socket") == 0)
        return sock;
    if (sock && strcmp(name, "socket_ro") == 0) {
        snprintf(buf, len, "%s_ro", sock);
        return buf;
    }
    if (dir) {
        snprintf(buf, len, "%s/%s", dir, name);
        return buf;
    }
    return NULL;
}

typedef int (*open_fn)(const char *, int, ...);

static int open_common(const char *name, const char *path, int flags, va_list ap)
{
    char buf[PATH_MAX];
    mode_t mode = 0;
    const char *to = redirect(path, buf, sizeof(buf));
    open_fn real = (open_fn)dlsym(RTLD_NEXT, name);
    if (flags & (O_CREAT | O_TMPFILE)) mode = va_arg(ap, mode_t);
    return real(to ? to : path, flags, mode);
}

int open(const char *path, int flags, ...)
{
    va_list ap; int r;
    va_start(ap, flags); r = open_common("open", path, flags, ap); va_end(ap);
    return r;
}

int open64(const char *path, int flags, ...)
{
    va_list ap; int r;
    va_start(ap, flags); r = open_common("open64", path, flags, ap); va_end(ap);
    return r;
}

int setrlimit(__rlimit_resource_t res, const struct rlimit *rl)
{
    int (*real)(__rlimit_resource_t, const struct rlimit *) = dlsym(RTLD_NEXT, "setrlimit");
    struct rlimit cur, want = *rl;
    if (res == RLIMIT_NOFILE && getrlimit(RLIMIT_NOFILE, &cur) == 0) {
        if (want.rlim_max > cur.rlim_max) want.rlim_max = cur.rlim_max;
        if (want.rlim_cur > want.rlim_max) want.rlim_cur = want.rlim_max;
    }
    return real(res, &want);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    int (*real)(int, const struct sockaddr *, socklen_t) = dlsym(RTLD_NEXT, "bind");
    char buf[PATH_MAX];
    if (addr && addr->sa_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
        const char *to = redirect(un->sun_path, buf, sizeof(buf));
        if (to && strlen(to) < sizeof(un->sun_path)) {
            struct sockaddr_un moved = *un;
            strcpy(moved.sun_path, to);
            return real(fd, (const struct sockaddr *)&moved, sizeof(moved));
        }
    }
    return real(fd, addr, len);
}

int unlink(const char *path)
{
    int (*real)(const char *) = dlsym(RTLD_NEXT, "unlink");
    char buf[PATH_MAX];
    const char *to = redirect(path, buf, sizeof(buf));
    return real(to ? to : path);
}

int mkdir(const char *path, mode_t mode)
{
    int (*real)(const char *, mode_t) = dlsym(RTLD_NEXT, "mkdir");
    char buf[PATH_MAX];
    const char *to = redirect(path, buf, sizeof(buf));
    return real(to ? to : path, mode);
}
