/* The pod sandbox ("pause") program for the local k3s: it holds the pod's
 * namespaces open, reaps the zombies it inherits and exits on SIGINT/SIGTERM.
 * tests/build-k3s.sh builds it static (gcc -Os -static) into a one-file image
 * tagged rancher/mirrored-pause:3.6, since no registry can be reached. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void down(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction d = {.sa_handler = down};
    struct sigaction r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &d, 0);
    sigaction(SIGTERM, &d, 0);
    sigaction(SIGCHLD, &r, 0);
    for (;;) pause();
}
