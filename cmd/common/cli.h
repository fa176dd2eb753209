/* What every cptools command shares: messages, exit codes, number parsing,
 * progress on a terminal, and interrupt handling. No algorithms here. */
#ifndef CP_CLI_H
#define CP_CLI_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* Exit codes, the same for every command (documented in each man page). */
enum {
    CLI_EXIT_OK = 0,       /* everything done */
    CLI_EXIT_PARTIAL = 1,  /* some inputs failed; the rest were done */
    CLI_EXIT_USAGE = 2,    /* bad flags or arguments; nothing done */
    CLI_EXIT_FATAL = 3,    /* a fatal error stopped the run (model, output) */
    CLI_EXIT_INTR = 130    /* interrupted (SIGINT/SIGTERM); no partial outputs */
};

extern const char *cli_prog;  /* set by cli_init */
extern int cli_verbosity;     /* 0 = -q, 1 = default, 2 = -v */

void cli_init(const char *prog);
/* "prog: message" on stderr (always, also with -q). */
void cli_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Only with -v. */
void cli_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Usage error: message, hint to --help, exit 2. */
void cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void cli_print_version(void);

/* Strict number parsing for flag values: the whole string must be a number in
 * range, otherwise a usage error naming the flag. */
long cli_parse_long(const char *flag, const char *s, long lo, long hi);
double cli_parse_double(const char *flag, const char *s, double lo, double hi);

/* SIGINT/SIGTERM: remove open temporary outputs and set cli_interrupted
 * (first signal) so a batch stops cleanly; a second signal exits 130. */
extern volatile sig_atomic_t cli_interrupted;
void cli_install_signal_handlers(void);

/* Progress on stderr, only when stderr is a terminal and not -q. */
typedef struct cli_progress {
    int enabled;
    size_t total, done;
    double t0, last;
    const char *unit;
} cli_progress;
void cli_progress_start(cli_progress *p, size_t total, const char *unit);
void cli_progress_update(cli_progress *p, size_t done, const char *extra);
void cli_progress_end(cli_progress *p);

#endif
