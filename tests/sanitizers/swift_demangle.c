/* Preloaded after the sanitizer runtime into Debian's uninstrumented mosquitto (tests/sanitizers/
 * mosquitto; ci/sanitize.sh builds it). Without it, the broker with fleetsign's plugin on a
 * PostgreSQL registry hangs for ever at start-up, in libpq's first bindtextdomain().
 *
 * Why: in an uninstrumented program the AddressSanitizer runtime initialises at the first malloc.
 * Here that malloc is inside bindtextdomain(), called by libgpg-error's constructor (mosquitto →
 * libsystemd → libgcrypt → libgpg-error) while it holds glibc's gettext lock (_nl_state_lock) for
 * writing. The runtime's initialisation looks up `swift_demangle` with dlsym(); the lookup fails,
 * and dlerror() translates its message with dcgettext(), which takes the same lock again in the
 * same thread and releases it on the way out. The lock's reader count then underflows when
 * bindtextdomain() releases it too, and the next writer (libpq's bindtextdomain for its own
 * messages) waits for ever. Seen with a gdb watchpoint on _nl_state_lock.
 *
 * With a `swift_demangle` in the process, the lookup succeeds, no message is translated, and the
 * lock stays balanced. The runtime calls it only for Swift symbol names ("_T…"), which a C++
 * program has none of; returning NULL means "not demangled". Test infrastructure only: nothing in
 * fleetsign links it. */
#include <stddef.h>

char* swift_demangle(const char* mangled, size_t length, char* out, size_t* out_length,
                     unsigned flags) {
  (void)mangled;
  (void)length;
  (void)out;
  (void)out_length;
  (void)flags;
  return NULL;
}
