/* A stand-in guest agent for the channel tests: it finds the virtio-serial port named
 * org.meda.agent.0 as the real agent does, says so on the console, and sends back every
 * byte the host writes to it. Built static (gcc -static) by the echo_agent fixture. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define PORT_NAME "org.meda.agent.0"
#define MARKER "MEDA-ECHO-AGENT-ON="

static int port_named(const char *entry) {
    char path[512], name[64];
    snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", entry);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, name, sizeof name - 1);
    close(fd);
    if (n <= 0) return 0;
    name[n] = 0;
    if (name[n - 1] == '\n') name[n - 1] = 0;
    return strcmp(name, PORT_NAME) == 0;
}

static int find_port(char *dev, size_t size) {
    for (int tries = 0; tries < 100; tries++) {
        DIR *dir = opendir("/sys/class/virtio-ports");
        struct dirent *entry;
        while (dir && (entry = readdir(dir))) {
            if (entry->d_name[0] != '.' && port_named(entry->d_name)) {
                snprintf(dev, size, "/dev/%s", entry->d_name);
                closedir(dir);
                return 0;
            }
        }
        if (dir) closedir(dir);
        usleep(100000);
    }
    return -1;
}

int main(void) {
    char dev[300], buf[4096];
    if (find_port(dev, sizeof dev) != 0) return 2;
    int port = open(dev, O_RDWR);
    if (port < 0) return 3;
    int console = open("/dev/console", O_WRONLY);
    if (console >= 0) {
        dprintf(console, MARKER "%s\n", dev);
        close(console);
    }
    for (;;) {  /* a read gives 0 while no host end is connected: wait for one */
        ssize_t n = read(port, buf, sizeof buf);
        if (n <= 0) {
            usleep(50000);
            continue;
        }
        for (ssize_t done = 0; done < n;) {
            ssize_t wrote = write(port, buf + done, n - done);
            if (wrote <= 0) break;
            done += wrote;
        }
    }
}
