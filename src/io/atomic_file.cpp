// Atomic whole-file write: temp file, fsync, then rename (the rename is the commit point).
#include "io/atomic_file.h"

#include <cstdio>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

#include "core/error.h"

namespace mtp {

void write_file_atomic(const std::string& path, const std::string& contents) {
    std::string tmp = path + ".tmp." + std::to_string(getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail(path, std::string("cannot open for writing: ") + std::strerror(errno));
    size_t done = 0;
    bool ok = true;
    while (ok && done < contents.size()) {
        ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
        if (n < 0 && errno == EINTR) continue;
        ok = n > 0;
        if (ok) done += size_t(n);
    }
    ok = ok && ::fsync(fd) == 0;                  // data on disk before the rename makes it visible
    ok = (::close(fd) == 0) && ok;
    if (!ok) {
        std::remove(tmp.c_str());
        fail(path, std::string("write failed: ") + std::strerror(errno));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        fail(path, "cannot rename temp file into place");
    }
}

} // namespace mtp
