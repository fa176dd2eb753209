#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cellpose/core.h"
#include "common/cli.h"

const char *cli_prog = "cptools";
int cli_verbosity = 1;
volatile sig_atomic_t cli_interrupted;

void cli_init(const char *prog) { cli_prog = prog; }

/* "prog: message" without the newline. */
static void vprefixed(const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: ", cli_prog);
    vfprintf(stderr, fmt, ap);
}

void cli_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprefixed(fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void cli_info(const char *fmt, ...)
{
    if (cli_verbosity < 2)
        return;
    va_list ap;
    va_start(ap, fmt);
    vprefixed(fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprefixed(fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see '%s --help')\n", cli_prog);
    exit(CLI_EXIT_USAGE);
}

void cli_print_version(void) { printf("%s (cptools) %s\n", cli_prog, cp_version()); }

long cli_parse_long(const char *flag, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        cli_usage_error("%s: '%s' is not a whole number from %ld to %ld", flag, s, lo, hi);
    return v;
}

double cli_parse_double(const char *flag, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi)
        cli_usage_error("%s: '%s' is not a number from %g to %g", flag, s, lo, hi);
    return v;
}

/* First signal: remove unfinished outputs and ask the command to stop after
 * its current step; a second one exits at once. Either way finished outputs
 * are complete files and a rerun redoes exactly what is missing. */
static void on_signal(int sig)
{
    cp_atomic_cleanup_all();
    if (cli_interrupted) {
        signal(sig, SIG_DFL);
        _exit(CLI_EXIT_INTR);
    }
    cli_interrupted = 1;
}

void cli_install_signal_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

void cli_progress_start(cli_progress *p, size_t total, const char *unit)
{
    memset(p, 0, sizeof *p);
    p->enabled = cli_verbosity >= 1 && isatty(STDERR_FILENO);
    p->total = total;
    p->unit = unit;
    p->t0 = p->last = cp_seconds();
}

void cli_progress_update(cli_progress *p, size_t done, const char *extra)
{
    p->done = done;
    if (!p->enabled)
        return;
    double now = cp_seconds();
    if (now - p->last < 0.2 && done < p->total)
        return;
    p->last = now;
    double el = now - p->t0, rate = el > 0 ? done / el : 0;
    double eta = rate > 0 && p->total > done ? (p->total - done) / rate : 0;
    fprintf(stderr, "\r%s: %zu/%zu %s  %.2f/s  ETA %.0fs %s\033[K", cli_prog, done, p->total, p->unit, rate,
            eta, extra ? extra : "");
}

void cli_progress_end(cli_progress *p)
{
    if (p->enabled)
        fputc('\n', stderr);
    p->enabled = 0;
}
