/* The pod sandbox's process: it only holds the pod's namespaces, so it
 * sleeps until a signal asks it to stop, and reaps nothing (no children). */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void stop(int signal) {
    (void)signal;
    _exit(0);
}

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    for (;;) {
        pause();
    }
}
