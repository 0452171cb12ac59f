/*
 * The guest-side test program of the real-Xen tier: runs in the PV domU, on the devices its
 * pcifront shows, through the guest kernel's sysfs (every config access is a pcifront op answered
 * by whichever backend serves the guest). Built static by the harness with gcc (no libc in the
 * guest's initramfs; a C loop is what a config-read latency needs under emulation).
 *
 * Every result is one line "XPBR <what> <bdf> ..." on stdout; the dom0 scenario parses them.
 *
 *   xpb-guest list                       every device: bdf vendor:device class
 *   xpb-guest config BDF                 the whole sysfs config file, hex
 *   xpb-guest sweep BDF [ALL [LIMIT]]    each offset < ALL (64) with sizes 1/2/4, then each
 *                                        dword < LIMIT (256): read, write all-ones, read, write
 *                                        the original back
 *   xpb-guest bar BDF [DWORDS [SELECT]]  memory decode on, mmap resource0, write SELECT to its
 *                                        first byte (pci-testdev's test index), read DWORDS (16)
 *   xpb-guest latency BDF N              N reads of the vendor/device dword; total ns
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define DEVICES "/sys/bus/pci/devices"

static int open_attr(const char *bdf, const char *name, int flags)
{
    char path[256];
    snprintf(path, sizeof path, DEVICES "/%s/%s", bdf, name);
    int fd = open(path, flags);
    if (fd < 0)
        printf("XPBR error %s open %s: %s\n", bdf, name, strerror(errno));
    return fd;
}

static long read_value(int fd, long off, int size, int *err)
{
    uint32_t v = 0;
    ssize_t n = pread(fd, &v, size, off);
    *err = n == size ? 0 : (n < 0 ? errno : EIO);
    if (size == 1)
        v &= 0xff;
    else if (size == 2)
        v &= 0xffff;
    return (long)v;
}

static int write_value(int fd, long off, int size, uint32_t v)
{
    ssize_t n = pwrite(fd, &v, size, off);
    return n == size ? 0 : (n < 0 ? errno : EIO);
}

static int cmd_list(void)
{
    DIR *dir = opendir(DEVICES);
    if (!dir) {
        printf("XPBR error - opendir: %s\n", strerror(errno));
        return 1;
    }
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        char ids[3][32] = {"", "", ""};
        const char *names[3] = {"vendor", "device", "class"};
        for (int i = 0; i < 3; i++) {
            int fd = open_attr(e->d_name, names[i], O_RDONLY);
            if (fd >= 0) {
                ssize_t n = read(fd, ids[i], sizeof ids[i] - 1);
                ids[i][n > 0 ? n : 0] = 0;
                ids[i][strcspn(ids[i], "\n")] = 0;
                close(fd);
            }
        }
        printf("XPBR dev %s %s:%s %s\n", e->d_name, ids[0] + 2, ids[1] + 2, ids[2]);
    }
    closedir(dir);
    return 0;
}

static int cmd_config(const char *bdf)
{
    int fd = open_attr(bdf, "config", O_RDONLY);
    if (fd < 0)
        return 1;
    unsigned char buf[4096];
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    close(fd);
    if (n < 0) {
        printf("XPBR error %s read config: %s\n", bdf, strerror(errno));
        return 1;
    }
    printf("XPBR config %s %zd ", bdf, n);
    for (ssize_t i = 0; i < n; i++)
        printf("%02x", buf[i]);
    printf("\n");
    return 0;
}

static int cmd_sweep(const char *bdf, long all_sizes, long limit)
{
    int fd = open_attr(bdf, "config", O_RDWR);
    if (fd < 0)
        return 1;
    static const int sizes[] = {1, 2, 4};
    for (long off = 0; off < limit; off++) {
        for (int s = 0; s < 3; s++) {
            int size = sizes[s];
            if (off % size || (off >= all_sizes && size != 4))
                continue;
            int e1, e2;
            long orig = read_value(fd, off, size, &e1);
            int wrc = write_value(fd, off, size, 0xffffffffu);
            long after = read_value(fd, off, size, &e2);
            int rrc = write_value(fd, off, size, (uint32_t)orig);
            printf("XPBR sweep %s %ld %d %lx %d %lx %d %d%d\n", bdf, off, size, orig, wrc, after,
                   rrc, e1 != 0, e2 != 0);
        }
    }
    close(fd);
    return 0;
}

static int cmd_bar(const char *bdf, int dwords, int select)
{
    int fd = open_attr(bdf, "config", O_RDWR);
    if (fd < 0)
        return 1;
    int err;
    long cmd = read_value(fd, 4, 2, &err);
    int wrc = write_value(fd, 4, 2, (uint32_t)(cmd | 0x2));
    long now = read_value(fd, 4, 2, &err);
    close(fd);
    printf("XPBR barcmd %s %lx %d %lx\n", bdf, cmd, wrc, now);
    int res = open_attr(bdf, "resource0", O_RDWR | O_SYNC);
    if (res < 0)
        return 1;
    volatile uint32_t *bar = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, res, 0);
    if (bar == MAP_FAILED) {
        printf("XPBR error %s mmap resource0: %s\n", bdf, strerror(errno));
        close(res);
        return 1;
    }
    /* pci-testdev answers with the header of the test selected by the last write to its first
     * byte (0 until one is): select test 1, so the read shows its name and sizes. */
    if (select >= 0)
        *(volatile uint8_t *)bar = (uint8_t)select;
    printf("XPBR bar %s %d ", bdf, dwords);
    for (int i = 0; i < dwords; i++)
        printf("%08x", bar[i]);
    printf("\n");
    munmap((void *)bar, 4096);
    close(res);
    return 0;
}

static int cmd_latency(const char *bdf, long n)
{
    int fd = open_attr(bdf, "config", O_RDONLY);
    if (fd < 0)
        return 1;
    struct timespec a, b;
    uint32_t v = 0;
    long failures = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        if (pread(fd, &v, 4, 0) != 4)
            failures++;
    clock_gettime(CLOCK_MONOTONIC, &b);
    close(fd);
    long long ns = (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    printf("XPBR latency %s %ld %lld %08x %ld\n", bdf, n, ns, v, failures);
    return failures != 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && !strcmp(argv[1], "list"))
        return cmd_list();
    if (argc >= 3 && !strcmp(argv[1], "config"))
        return cmd_config(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "sweep"))
        return cmd_sweep(argv[2], argc > 3 ? atol(argv[3]) : 64, argc > 4 ? atol(argv[4]) : 256);
    if (argc >= 3 && !strcmp(argv[1], "bar"))
        return cmd_bar(argv[2], argc > 3 ? atoi(argv[3]) : 16, argc > 4 ? atoi(argv[4]) : -1);
    if (argc >= 4 && !strcmp(argv[1], "latency"))
        return cmd_latency(argv[2], atol(argv[3]));
    fprintf(stderr, "usage: xpb-guest list|config BDF|sweep BDF [ALL [LIMIT]]|bar BDF [N [SELECT]]|latency BDF N\n");
    return 2;
}
